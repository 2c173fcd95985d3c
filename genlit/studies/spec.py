"""The study file: which configs, seeds, hyperparameters, budget and evaluation make a study.

A study file is YAML (data only: it is read with ``yaml.safe_load`` and never runs code)::

    name: mnist_gans                 # the Optuna study's name (default: the file's stem)
    folder: runs/studies/mnist_gans  # where the trials' runs and the report go (this default)
    configs:                         # each config is one "model x dataset" of the report
      - configs/mnist/nsgan.yaml
      - config: configs/mnist/glann.yaml
        arguments: ["--model.init_args.glo_epochs=1"]   # for this config's trials only
      - config: configs/mnist/aeot_gan.yaml             # starts from a finished AE-OT trial
        after: configs/mnist/aeot.yaml                  # of the same seed, whose last.ckpt
        checkpoint_argument: model.init_args.autoencoder_checkpoint   # is given here
    seeds: [0, 1, 2]
    budget: {generator_steps: 1000}  # or {epochs: 20}
    evaluation: {num_samples: 10000, split: test}       # features: the config's FID callback's
                                     # copying: false leaves out the data-copying figures
    arguments: ["--data.init_args.root=data"]           # given to every trial (fit and evaluate)
    retries: 1                       # a crashed trial runs again up to this many times
    search:                          # optional: hyperparameter settings, each run with every seed
      sampler: random                # or grid (every combination of the listed values)
      settings: 8                    # random: settings drawn per config
      seed: 0
      space:
        model.init_args.generator_optimizer.init_args.lr: {low: 1.0e-5, high: 1.0e-2, log: true}
        model.init_args.k: [1, 5]

A trial is one (config, hyperparameter setting, seed); the study holds
``len(configs) x settings x len(seeds)`` of them.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genlit.errors import GenlitError

KEYS = {
    "name", "folder", "configs", "seeds", "budget", "evaluation", "arguments", "retries",
    "search", "quiet", "lecture",
}  # fmt: skip
EVALUATION_KEYS = {"features", "num_samples", "split", "weights_path", "batch_size", "kid", "copying"}
CONFIG_KEYS = {"config", "name", "arguments", "after", "checkpoint_argument", "budget"}


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter of a search: a dotted ``genlit fit`` key and its values or range."""

    key: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def draw(self, rng: random.Random) -> Any:
        if self.choices is not None:
            return rng.choice(self.choices)
        assert self.low is not None and self.high is not None
        if self.integer:
            return rng.randint(int(self.low), int(self.high))
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class ConfigEntry:
    """One config of the study, with its own extra ``genlit fit`` arguments."""

    path: Path
    name: str
    arguments: tuple[str, ...] = ()
    after: str | None = None
    """Name of the config whose finished trial (same seed) this one starts from."""
    checkpoint_argument: str | None = None
    budget: dict[str, int] | None = None
    """This config's own budget (e.g. epochs for a model whose stages are epochs), else the study's."""

    @property
    def dataset(self) -> str:
        return self.name.rsplit("/", 1)[0] if "/" in self.name else ""

    @property
    def model(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Job:
    """One trial to run: a config, a hyperparameter setting and a seed."""

    config: ConfigEntry
    seed: int
    setting: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identifies the job across retries: ``mnist/nsgan:setting0:seed1``."""
        return f"{self.config.name}:setting{self.setting}:seed{self.seed}"

    @property
    def version(self) -> str:
        return f"setting{self.setting}_seed{self.seed}"

    def fit_arguments(self) -> list[str]:
        """The hyperparameters as ``--key=value`` arguments of ``genlit fit``."""
        return [f"--{key}={_cli_value(value)}" for key, value in self.params.items()]


@dataclass(frozen=True)
class StudySpec:
    """A parsed study file."""

    path: Path
    name: str
    folder: Path
    configs: tuple[ConfigEntry, ...]
    seeds: tuple[int, ...]
    budget: dict[str, int]
    evaluation: dict[str, Any]
    arguments: tuple[str, ...]
    retries: int
    search: dict[str, Any] | None
    dimensions: tuple[Dimension, ...]
    quiet: bool = True
    lecture: dict[str, str] = field(default_factory=dict)
    """Published numbers to print beside the report's rows, by config name."""

    def settings(self) -> list[dict[str, Any]]:
        """The hyperparameter settings every config is run with (``[{}]`` without a search)."""
        if not self.dimensions:
            return [{}]
        assert self.search is not None
        if self.search.get("sampler", "grid") == "grid":
            values = [d.choices for d in self.dimensions]
            return [
                {d.key: v for d, v in zip(self.dimensions, combo, strict=True)}
                for combo in itertools.product(*values)  # type: ignore[arg-type]
            ]
        rng = random.Random(self.search.get("seed", 0))
        return [
            {d.key: d.draw(rng) for d in self.dimensions} for _ in range(self.search["settings"])
        ]

    def jobs(self) -> list[Job]:
        """Every trial of the study, in the order workers take them (prerequisites first)."""
        settings = self.settings()
        ordered = sorted(self.configs, key=lambda c: c.after is not None)
        return [
            Job(config, seed, index, params)
            for config in ordered
            for index, params in enumerate([{}] if config.after else settings)
            for seed in self.seeds
        ]

    def config(self, name: str) -> ConfigEntry:
        return next(c for c in self.configs if c.name == name)

    def fingerprint(self) -> str:
        """What the stored trials were made from: a changed file is refused, not mixed in.

        Each trial's config, setting, seed, own arguments and budget, and the evaluation; not
        the study-wide ``arguments``, which say where a machine keeps its data.
        """
        jobs = [
            [job.key, list(job.config.arguments), job.config.budget or self.budget,
             {k: _cli_value(v) for k, v in job.params.items()}]
            for job in self.jobs()
        ]  # fmt: skip
        return json.dumps({"jobs": sorted(jobs), "evaluation": self.evaluation}, sort_keys=True)

    def describe_evaluation(self) -> str:
        evaluation = self.evaluation
        features = evaluation.get("features", "each config's FID callback's")
        samples = evaluation.get("num_samples", "the config's FID callback's (else 10000)")
        split = evaluation.get("split", "config's FID callback's")
        copying = "" if evaluation.get("copying", True) is False else "; data copying against the train split"
        return f"features {features}, {samples} samples against the {split} split{copying}"

    def describe_budget(self) -> str:
        """The study's budget, and the configs that have their own."""
        own = [f"{c.name} {describe_budget(c.budget)}" for c in self.configs if c.budget]
        return describe_budget(self.budget) + (f" ({', '.join(own)})" if own else "")


def _cli_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def config_name(path: Path, root: Path) -> str:
    """``configs/mnist/nsgan.yaml`` -> ``mnist/nsgan``: the dataset and model of a report row."""
    parts = path.with_suffix("").parts
    if "configs" in parts:
        return "/".join(parts[len(parts) - parts[::-1].index("configs"):])
    try:
        return path.with_suffix("").resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return "/".join(parts[-2:])


def load_study(path: str | Path) -> StudySpec:
    """Reads and checks a study file.

    Raises:
        GenlitError: one line naming the key that is wrong and what it should be.
    """
    path = Path(path)
    if not path.is_file():
        raise GenlitError(f"study file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise GenlitError(f"study file {path} is not valid YAML{where}: fix its syntax") from None
    if not isinstance(raw, dict):
        raise GenlitError(f"study file {path} must be a mapping with configs, seeds and budget")

    def fail(message: str) -> GenlitError:
        return GenlitError(f"study file {path}: {message}")

    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r}: the keys are {', '.join(sorted(KEYS))}")
    base = path.parent
    repo = _repo_root(base)
    configs = tuple(_config_entry(item, base, repo, fail) for item in raw.get("configs") or [])
    if not configs:
        raise fail("configs is empty: list the experiment YAMLs to run (configs/DATASET/MODEL.yaml)")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise fail(f"config {twice} is listed twice: give one a different name: key")
    for entry in configs:
        if entry.after is not None and entry.after not in names:
            raise fail(f"{entry.name}: after {entry.after} is not one of the study's configs")
        if (entry.after is None) != (entry.checkpoint_argument is None):
            raise fail(f"{entry.name}: after and checkpoint_argument go together")
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise fail(f"seeds must be a list of integers, e.g. [0, 1, 2], got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise fail(f"seeds {seeds} repeat a seed")
    budget = _budget(raw.get("budget"), "budget", fail)
    evaluation = raw.get("evaluation") or {}
    if not isinstance(evaluation, dict) or set(evaluation) - EVALUATION_KEYS:
        bad = sorted(set(evaluation) - EVALUATION_KEYS) if isinstance(evaluation, dict) else [evaluation]
        raise fail(f"evaluation: unknown {bad[0]!r}: the keys are {', '.join(sorted(EVALUATION_KEYS))}")
    retries = raw.get("retries", 1)
    if not isinstance(retries, int) or retries < 0:
        raise fail(f"retries must be an integer >= 0, got {retries!r}")
    search = raw.get("search")
    dimensions = _dimensions(search, fail) if search else ()
    folder = Path(raw.get("folder") or Path("runs") / "studies" / str(raw.get("name") or path.stem))
    lecture = raw.get("lecture") or {}
    if not isinstance(lecture, dict):
        raise fail("lecture must map config names to the published numbers")
    return StudySpec(
        path=path,
        name=str(raw.get("name") or path.stem),
        folder=folder,
        configs=configs,
        seeds=tuple(seeds),
        budget=dict(budget),
        evaluation=dict(evaluation),
        arguments=tuple(_arguments(raw.get("arguments"), "arguments", fail)),
        retries=retries,
        search=search,
        dimensions=dimensions,
        quiet=bool(raw.get("quiet", True)),
        lecture={str(k): str(v) for k, v in lecture.items()},
    )


def _budget(budget: Any, where: str, fail: Any) -> dict[str, int]:
    if (
        not isinstance(budget, dict)
        or len(budget) != 1
        or next(iter(budget)) not in ("generator_steps", "epochs")
        or not isinstance(next(iter(budget.values())), int)
        or next(iter(budget.values())) < 1
    ):
        raise fail(f"{where} must be {{generator_steps: N}} or {{epochs: N}} with N >= 1, got {budget!r}")
    return dict(budget)


def describe_budget(budget: dict[str, int]) -> str:
    """``1000 generator steps`` or ``20 epochs``."""
    (key, value), = budget.items()
    return f"{value} {'generator steps' if key == 'generator_steps' else 'epochs'}"


def _repo_root(start: Path) -> Path:
    for folder in [start.resolve(), *start.resolve().parents]:
        if (folder / "configs").is_dir():
            return folder
    return Path.cwd()


def _arguments(value: Any, where: str, fail: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(a, str) and a.startswith("--") for a in value):
        raise fail(f"{where} must be a list of --key=value strings, got {value!r}")
    return value


def _find_config(value: str, base: Path, repo: Path) -> Path | None:
    for root in (Path.cwd(), base, repo):
        candidate = (root / value) if not Path(value).is_absolute() else Path(value)
        if candidate.is_file():
            return candidate.resolve()
    return None


def _config_entry(item: Any, base: Path, repo: Path, fail: Any) -> ConfigEntry:
    if isinstance(item, str):
        item = {"config": item}
    if not isinstance(item, dict) or "config" not in item:
        raise fail(f"each configs entry is a path or a mapping with a config key, got {item!r}")
    unknown = sorted(set(item) - CONFIG_KEYS)
    if unknown:
        raise fail(f"configs entry {item['config']}: unknown key {unknown[0]!r} ({', '.join(sorted(CONFIG_KEYS))})")
    path = _find_config(str(item["config"]), base, repo)
    if path is None:
        raise fail(f"config {item['config']} does not exist (paths are relative to the current folder or the study file)")
    after = item.get("after")
    if after is not None:
        after_path = _find_config(str(after), base, repo)
        after = config_name(after_path, repo) if after_path else str(after)
    return ConfigEntry(
        path=path,
        name=str(item.get("name") or config_name(path, repo)),
        arguments=tuple(_arguments(item.get("arguments"), f"{item['config']}: arguments", fail)),
        after=after,
        checkpoint_argument=item.get("checkpoint_argument"),
        budget=_budget(item["budget"], f"{item['config']}: budget", fail) if "budget" in item else None,
    )


def _dimensions(search: Any, fail: Any) -> tuple[Dimension, ...]:
    if not isinstance(search, dict) or not isinstance(search.get("space"), dict) or not search["space"]:
        raise fail("search needs a space: a mapping of genlit fit keys to value lists or {low, high}")
    sampler = search.get("sampler", "grid")
    if sampler not in ("grid", "random"):
        raise fail(f"search sampler must be grid or random, got {sampler!r}")
    if sampler == "random" and (not isinstance(search.get("settings"), int) or search["settings"] < 1):
        raise fail("a random search needs settings: N (>= 1), the settings drawn per config")
    dimensions = []
    for key, value in search["space"].items():
        key = str(key).removeprefix("--")
        if isinstance(value, list) and value:
            dimensions.append(Dimension(key, choices=tuple(value)))
        elif isinstance(value, dict) and {"low", "high"} <= set(value):
            if sampler == "grid":
                raise fail(f"search {key}: a grid takes a list of values, not a range")
            low, high = value["low"], value["high"]
            if not all(isinstance(v, (int, float)) for v in (low, high)) or low >= high:
                raise fail(f"search {key}: low must be a number below high, got {low!r}, {high!r}")
            if value.get("log") and low <= 0:
                raise fail(f"search {key}: a log range needs low > 0")
            integer = isinstance(low, int) and isinstance(high, int) and not value.get("log")
            dimensions.append(Dimension(key, low=float(low), high=float(high), log=bool(value.get("log")), integer=integer))
        else:
            raise fail(f"search {key}: give a list of values or {{low: A, high: B, log: true}}")
    return tuple(dimensions)
