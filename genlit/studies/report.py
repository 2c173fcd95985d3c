"""``genlit study report``: the finished trials of a study, per model and dataset.

Writes into the study folder: ``report.md`` (the table printed), ``report.csv`` (one row per
config, or per config and hyperparameter setting with a search), ``trials.csv`` (every trial,
failed and running ones included), ``fid_boxplot.png`` (FID over seeds per config) and
``best_samples.png`` (16 samples of each config's best trial).
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genlit.studies.spec import StudySpec
from genlit.studies.worker import job_states


@dataclass
class Row:
    """The finished trials of one config (and setting): what the report prints of them."""

    config: str
    setting: int | None
    fids: list[float]
    minutes: list[float]
    jobs: int
    failed: int
    running: int
    waiting: int
    best_checkpoint: str | None
    params: dict[str, Any]
    features: str | None
    reference: str | None
    num_samples: int | None
    c_t: list[float] = field(default_factory=list)
    """Meehan et al.'s C_T of each finished trial that measured it (data copying)."""
    nn_ratio: list[float] = field(default_factory=list)
    """Each finished trial's median nearest-training distance over the held-out images'."""

    @property
    def mean(self) -> float:
        return statistics.fmean(self.fids) if self.fids else math.nan

    @property
    def std(self) -> float:
        """The sample standard deviation over the finished trials (0 for one trial)."""
        return statistics.stdev(self.fids) if len(self.fids) > 1 else 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.fids) if self.fids else math.nan

    @property
    def best(self) -> float:
        return min(self.fids) if self.fids else math.nan


def rows(spec: StudySpec, study: Any, by_setting: bool | None = None) -> list[Row]:
    """One row per config (per config and setting when ``by_setting``, default: with a search)."""
    by_setting = bool(spec.dimensions) if by_setting is None else by_setting
    jobs = spec.jobs()
    states = job_states(study, jobs)
    groups: dict[tuple[str, int | None], list[Any]] = {}
    for job in jobs:
        groups.setdefault((job.config.name, job.setting if by_setting else None), []).append(job)
    result = []
    for (config, setting), members in groups.items():
        mine = [states[job.key] for job in members]
        done = [s.best for s in mine if s.best is not None]
        best = min(done, key=lambda t: t.value) if done else None
        result.append(
            Row(
                config=config,
                setting=setting,
                fids=[t.value for t in done],
                minutes=[t.user_attrs.get("seconds", math.nan) / 60 for t in done],
                jobs=len(members),
                failed=sum(1 for s in mine if s.state == "failed"),
                running=sum(1 for s in mine if s.state == "running"),
                waiting=sum(1 for s in mine if s.state == "waiting"),
                best_checkpoint=best.user_attrs.get("checkpoint") if best else None,
                params=members[0].params if setting is not None else {},
                features=best.user_attrs.get("features") if best else None,
                reference=best.user_attrs.get("reference") if best else None,
                num_samples=best.user_attrs.get("num_samples") if best else None,
                c_t=_finite(t.user_attrs.get("copying_c_t") for t in done),
                nn_ratio=_finite(t.user_attrs.get("copying_nn_ratio") for t in done),
            )
        )
    return result


def _finite(values: Any) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _spread(values: list[float], digits: int = 3) -> str:
    """``mean ± sample std`` (``-`` for none)."""
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}g} ± {std:.2g}"


def _number(value: float, digits: int = 4) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}g}"


def markdown(spec: StudySpec, study: Any, table: list[Row]) -> str:
    """The report: protocol, table, and what is not finished (failed trials with their error)."""
    lecture = any(spec.lecture.get(r.config) for r in table)
    evaluated = {r.features: r for r in table if r.features}  # one line per feature network
    lines = [
        f"# Study {spec.name}",
        "",
        f"Budget {spec.describe_budget()} per trial; seeds {', '.join(map(str, spec.seeds))}; "
        f"evaluation: {spec.describe_evaluation()}.",
    ]
    for features, row in evaluated.items():
        lines.append(f"Measured with {features}; {row.num_samples} samples against {row.reference}.")
    lines += [
        "FID mean ± sample std over the finished trials (seeds); lower is better.",
        "Data copying in the same features (genlit.metrics.copying): C_T well below 0 means samples "
        "nearer the training images than held-out real images are (copying), near 0 generalising, "
        "above 0 underfitting; NN ratio is the median distance to the nearest training image over "
        "the held-out images' (1: as far as real images).",
        "",
        "| model | dataset | finished | best | mean ± std | median | C_T | NN ratio | min/trial |"
        + (" lecture (Inception, its protocol) |" if lecture else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if lecture else ""),
    ]
    for row in table:
        dataset, _, model = row.config.rpartition("/")
        name = model if row.setting is None else f"{model} (setting {row.setting})"
        spread = f"{_number(row.mean, 3)} ± {_number(row.std, 2)}" if row.fids else "-"
        minutes = statistics.fmean(row.minutes) if row.minutes else math.nan
        lines.append(
            f"| {name} | {dataset} | {len(row.fids)}/{row.jobs} | {_number(row.best)} | {spread} "
            f"| {_number(row.median)} | {_spread(row.c_t, 2)} | {_spread(row.nn_ratio)} | {_number(minutes, 2)} |"
            + (f" {spec.lecture.get(row.config, '')} |" if lecture else "")
        )
    if any(r.params for r in table):
        lines += ["", "Settings:"]
        lines += [f"- {r.config} setting {r.setting}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.params.items()) for r in table if r.setting is not None]
    unfinished = [r for r in table if len(r.fids) < r.jobs]
    if unfinished:
        lines += ["", "Not finished:"]
        for row in unfinished:
            parts = [f"{n} {what}" for n, what in ((row.failed, "failed"), (row.running, "running"), (row.waiting, "waiting")) if n]
            lines.append(f"- {row.config}: {', '.join(parts)}")
        for state in job_states(study, spec.jobs()).values():
            if state.state == "failed" and state.last is not None:
                error = state.last.user_attrs.get("error") or "its worker stopped (no heartbeat)"
                lines.append(f"  - {state.key} (trial {state.last.number}): {error}")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, table: list[Row]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["config", "dataset", "model", "setting", "finished", "trials", "failed",
                         "running", "waiting", "best", "mean", "std", "median", "minutes_per_trial",
                         "params", "c_t_mean", "c_t_std", "nn_ratio_mean", "nn_ratio_std"])  # fmt: skip
        for row in table:
            dataset, _, model = row.config.rpartition("/")
            minutes = statistics.fmean(row.minutes) if row.minutes else math.nan
            writer.writerow([row.config, dataset, model, "" if row.setting is None else row.setting,
                             len(row.fids), row.jobs, row.failed, row.running, row.waiting,
                             row.best, row.mean, row.std, row.median, minutes,
                             ";".join(f"{k}={v}" for k, v in row.params.items()),
                             *_mean_std(row.c_t), *_mean_std(row.nn_ratio)])  # fmt: skip


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_trials(path: Path, study: Any) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["trial", "job", "state", "fid", "kid_mean", "c_t", "nn_ratio", "memorization",
                         "member_share", "minutes", "device", "run_dir", "error"])  # fmt: skip
        for trial in study.get_trials(deepcopy=False):
            attrs = trial.user_attrs
            writer.writerow([trial.number, attrs.get("job"), trial.state.name, trial.value,
                             attrs.get("kid_mean"), attrs.get("copying_c_t"), attrs.get("copying_nn_ratio"),
                             attrs.get("copying_memorization"), attrs.get("copying_member_share"),
                             (attrs.get("seconds") or math.nan) / 60,
                             attrs.get("device"), attrs.get("run_dir"), attrs.get("error") or ""])  # fmt: skip


def boxplot(path: Path, table: list[Row]) -> None:
    """FID over the finished trials, one box per config."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [r for r in table if r.fids]
    fig = Figure(figsize=(max(4.0, 0.6 * len(shown) + 1.5), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if shown:
        labels = [r.config if r.setting is None else f"{r.config}#{r.setting}" for r in shown]
        ax.boxplot([r.fids for r in shown], tick_labels=labels)
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    ax.set_ylabel("FID (lower is better)")
    ax.set_title("FID over seeds", fontsize=9)
    fig.savefig(path, bbox_inches="tight")


def best_samples(path: Path, table: list[Row], n: int = 16, seed: int = 0) -> None:
    """16 samples of each config's best trial, one labelled row per config."""
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from torchvision.utils import make_grid

    from genlit.checkpoints import load_model

    shown = [r for r in table if r.best_checkpoint and Path(r.best_checkpoint).is_file()]
    fig = Figure(figsize=(8.0, 0.9 * max(1, len(shown)) + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    for index, row in enumerate(shown):
        ax = fig.add_subplot(len(shown), 1, index + 1)
        ax.axis("off")
        model = load_model(row.best_checkpoint)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            with torch.no_grad():
                samples = model.sample(n).float().cpu()
        if samples.dim() != 4:
            continue
        grid = make_grid(samples, nrow=n, padding=1, normalize=True, value_range=(-1, 1))
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_title(f"{row.config}: FID {row.best:.4g}", fontsize=7, loc="left")
    fig.savefig(path, bbox_inches="tight")


def report(spec: StudySpec, study: Any, samples: bool = True) -> str:
    """Writes the report files into the study folder and returns the Markdown table."""
    folder = spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    table = rows(spec, study)
    text = markdown(spec, study, table)
    (folder / "report.md").write_text(text)
    write_csv(folder / "report.csv", table)
    write_trials(folder / "trials.csv", study)
    boxplot(folder / "fid_boxplot.png", table)
    if samples:
        best_samples(folder / "best_samples.png", table)
    return text
