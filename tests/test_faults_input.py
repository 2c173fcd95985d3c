"""Bad input that genlit copes with (the one-line errors themselves are in test_bad_input.py):
unreadable images skipped on request, generation and extraction refusing what they cannot do."""

from __future__ import annotations

import gzip
import logging

import pytest
import torch
from test_bad_input import folder_args, image_folder

from genlit.cli import main


def test_skip_unreadable_trains_on_the_rest(tmp_path, capsys, caplog, no_network):
    folder = image_folder(tmp_path, b"garbage")
    (folder / "also_broken.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="datamodules.images"):
        main(folder_args(folder, "--data.init_args.skip_unreadable=true", f"--trainer.default_root_dir={tmp_path}"))
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1, skipped
    assert skipped[0].startswith("ImageFolder: skipped 2 unreadable images of 14 (first: ")
    assert "genlit: GAN finished at global step 2" in capsys.readouterr().out


def test_generate_into_refuses_batch_size_below_1():
    from genlit.metrics.fid import generate_into

    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        generate_into(None, lambda b: torch.zeros(b, 1, 8, 8), 4, batch_size=0)


def test_truncated_archive_leaves_no_extracted_file(tmp_path):
    from datamodules._datasets import DataError, extract_idx

    raw = tmp_path / "raw"
    raw.mkdir()
    with gzip.open(raw / "x.gz", "wb") as file:
        file.write(bytes(range(256)) * 100)
    (raw / "x.gz").write_bytes((raw / "x.gz").read_bytes()[:40])
    with pytest.raises(DataError, match="x.gz is truncated"):
        extract_idx(raw, ["x"])
    assert sorted(p.name for p in raw.iterdir()) == ["x.gz"]
