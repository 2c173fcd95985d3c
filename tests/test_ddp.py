"""DDP with two CPU processes (gloo): every family trains with plain --trainer.strategy=ddp, the
ranks hold the same networks at every evaluation and at the end, and the FID callback gives the
value of one process on the same samples."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from ddp_launch import CASES

REPO = Path(__file__).resolve().parents[1]
# Both tests read the one launch of tests/ddp_launch.py: keep them on one xdist worker.
pytestmark = pytest.mark.xdist_group("ddp")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> tuple[dict[str, str], str, Path]:
    """``({run: its rank-0 stdout}, stderr, folder)`` of the one DDP launch."""
    out = tmp_path_factory.mktemp("ddp")
    result = subprocess.run(
        [sys.executable, "tests/ddp_launch.py", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sections = dict(part.split("\n", 1) for part in result.stdout.split("=== ")[1:])
    return sections, result.stderr, out


def test_plain_ddp_trains_two_network_models(ddp_runs):
    sections, err, _ = ddp_runs
    assert list(sections) == [*CASES, "fid"]
    assert "unused" not in err
    assert "Starting with 2 processes" in err + "".join(sections.values())
    for case in CASES:
        assert "finished at global step" in sections[case], (case, sections[case][-2000:])
        assert "ranks: 2 (DDPStrategy)" in sections[case], (case, sections[case][-2000:])
    assert re.search(r"val/modes\s+\d", sections["gan"]), sections["gan"]


def test_every_rank_evaluates_and_saves_the_same_networks(ddp_runs):
    # tests/ddp_checks.py: digests of every parameter and buffer, gathered from both ranks at
    # each evaluation point (every 2 generator steps and the final one) and after the fit, and
    # compared with the last.ckpt rank 0 wrote. Batch-norm statistics are what used to differ.
    sections, _, _ = ddp_runs
    with_buffers = []
    for case in CASES:
        line = re.search(r"agree: (.*)", sections[case])
        assert line, (case, sections[case][-2000:])
        found = dict(part.split("=", 1) for part in line.group(1).split(" ", 7))
        assert found["params_same"] == "True", (case, line.group(1))
        assert found["buffers_same"] == "True", (case, line.group(1))
        assert found["checkpoint_same"] == "True", (case, line.group(1))
        assert int(found["evaluations"]) >= 2 and found["differed"] == "[]", (case, line.group(1))
        assert found["ot_same"] == "True", (case, line.group(1))
        assert found["ot"] == str(case.startswith("aeot")), (case, line.group(1))  # the map is in the file
        if int(found["buffers"]) > 1:
            with_buffers.append(case)
    assert {"gan_images", "ae", "vae", "wae_gan", "aeot", "aeot_gan"} <= set(with_buffers)


def test_fid_under_ddp_equals_one_process(ddp_runs):
    from ddp_fid_script import measure

    sections, err, out = ddp_runs
    fid, kid = re.search(r"FID=(\S+) KID=(\S+)", sections["fid"]).groups()
    values = {2: (float(fid), float(kid))}
    values[1] = measure(1, str(out / "fid_cache"))  # one process, this one, on the cached reference
    assert values[1][0] > 1.0  # a real distance, not a degenerate zero
    assert values[2][0] == pytest.approx(values[1][0], rel=1e-4)
    # KID averages over random subsets, and the gathered features come in another order: the
    # same estimator on the same set, not the same subsets.
    assert values[2][1] == pytest.approx(values[1][1], rel=2e-2)


def test_precision_recall_class_coverage_and_copying_under_ddp_equal_one_process(ddp_runs):
    from ddp_fid_script import KEYS, measure

    sections, err, out = ddp_runs
    found = dict(re.findall(r"(\w+)=(\S+)", sections["fid"]))
    two = {key: float(found[key]) for key in KEYS[2:]}
    one = dict(zip(KEYS, measure(1, str(out / "fid_cache")), strict=True))
    assert one["classes"] >= 2 and 0.2 < one["precision"] < 0.8  # half the bank is real digits
    # half the bank is training images themselves: C_T is a real (finite) z, not NaN
    assert one["c_t"] == one["c_t"] and one["closer_share"] > 0.3
    for key, value in two.items():  # the gathered samples are the same set: the same values
        # (distances from float32 products: equal to float32's precision, not bit for bit)
        assert value == pytest.approx(one[key], abs=1e-6, rel=1e-5), key
