"""``genlit study run|report STUDY.yaml``: many trainings of many configs and seeds, measured alike.

    genlit study run studies/lecture_fid_table_cpu.yaml --workers 2 --data.init_args.root=/data
    genlit study run studies/lecture_fid_table.yaml --storage postgresql://user@host/genlit
    genlit study report studies/lecture_fid_table_cpu.yaml
    optuna-dashboard sqlite:///runs/studies/lecture_fid_table_cpu/study.db

Every worker of every machine that opens the same ``--storage`` takes part in the same study.
``--data.*`` arguments of ``run`` (where this machine keeps the datasets) go to every trial.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from typing import Any

from genlit.errors import GenlitError


def devices(value: str) -> list[str]:
    """``auto`` (every visible CUDA GPU, else the CPU), ``cpu``, or GPU indices ``0,1``."""
    if value == "auto":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    if value == "cpu":
        return ["cpu"]
    try:
        indices = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise GenlitError(f"--devices {value}: give auto, cpu or GPU indices such as 0,1") from None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [i for i in indices if i >= count]
    if missing or not indices:
        raise GenlitError(
            f"--devices {value}: this machine has {count} CUDA GPU(s): give indices below {count}, or cpu"
        )
    return [f"cuda:{i}" for i in indices]


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="genlit study",
        description="Studies: every config of a study file trained with every seed (and "
        "hyperparameter setting), each trial measured alike; Optuna's storage holds them.",
    )
    commands = main.add_subparsers(dest="command", required=True, metavar="{run,report}")
    run = commands.add_parser("run", help="run the study's trials (as one worker per device slot)")
    report = commands.add_parser("report", help="print and write the study's report")
    for sub in (run, report):
        sub.add_argument("study", help="the study file (YAML)")
        sub.add_argument(
            "--storage",
            default=None,
            help="Optuna storage URL shared by all workers (default: sqlite:///FOLDER/study.db "
            "in the study folder; postgresql://user:password@host/db for many machines)",
        )
    run.add_argument(
        "--devices", default="auto", help="auto (every GPU, else the CPU), cpu, or GPU indices 0,1"
    )
    run.add_argument(
        "--workers-per-device", "--workers", dest="workers", type=int, default=1,
        help="trials run at once on each device (several per GPU for small networks; on the "
        "CPU, the parallel trials)",
    )  # fmt: skip
    run.add_argument(
        "--threads", type=int, default=None,
        help="torch threads of a CPU trial (default: the cores divided among the workers)",
    )  # fmt: skip
    run.add_argument(
        "--heartbeat", type=int, default=30,
        help="seconds between a running trial's heartbeats; a trial silent for 3 of them is "
        "taken as lost with its worker and retried (default 30)",
    )  # fmt: skip
    report.add_argument(
        "--no-samples", action="store_true", help="skip the sheet of each config's best samples"
    )
    return main


def study_main(argv: list[str]) -> None:
    """Entry point of ``genlit study``."""
    args, extra = parser().parse_known_args(argv)
    unknown = [a for a in extra if not a.startswith("--data.")]
    if unknown or (extra and args.command != "run"):
        parser().error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    from genlit.studies.spec import load_study
    from genlit.studies.worker import default_storage, open_storage, open_study, progress_line

    spec = load_study(args.study)
    if extra:  # e.g. --data.init_args.root=/data: where this machine keeps the datasets
        spec = dataclasses.replace(spec, arguments=(*spec.arguments, *extra))
    url = args.storage or default_storage(spec)
    _quiet_optuna()
    if args.command == "report":
        if args.storage is None and not (spec.folder / "study.db").is_file():
            raise GenlitError(
                f"no study {spec.name} in {spec.folder}: run it first (genlit study run "
                f"{args.study}), or give the --storage it ran on"
            )
        storage = open_storage(url, spec.retries)
        import optuna

        try:
            study = optuna.load_study(study_name=spec.name, storage=storage)
        except KeyError:
            raise GenlitError(
                f"study {spec.name} is not in {url}: run it first (genlit study run {args.study})"
            ) from None
        from genlit.studies.report import report

        print(report(spec, study, samples=not args.no_samples), end="", flush=True)
        print(f"genlit: report written to {spec.folder}/report.md, report.csv, trials.csv, "
              "fid_boxplot.png" + ("" if args.no_samples else ", best_samples.png"), flush=True)
        return
    if args.workers < 1:
        raise GenlitError(f"--workers-per-device must be >= 1, got {args.workers}")
    if args.heartbeat < 1:
        raise GenlitError(f"--heartbeat must be >= 1 second, got {args.heartbeat}")
    slots = [device for device in devices(args.devices) for _ in range(args.workers)]
    threads = args.threads or max(1, (os.cpu_count() or 1) // len(slots))
    storage = open_storage(url, spec.retries, args.heartbeat)
    study = open_study(spec, storage)
    print(f"genlit study {spec.name}: {len(spec.jobs())} trials ({len(spec.configs)} configs x "
          f"{len(spec.settings())} setting(s) x {len(spec.seeds)} seed(s)), budget "
          f"{spec.describe_budget()}, {spec.describe_evaluation()}; storage {url}", flush=True)
    print(f"genlit study {spec.name}: {len(slots)} worker(s) on {', '.join(dict.fromkeys(slots))}"
          + (f", {threads} thread(s) each" if "cpu" in slots else ""), flush=True)
    print(progress_line(spec, study), flush=True)
    ran = run_workers(spec, study, storage, slots, threads, poll=min(2.0, args.heartbeat))
    print(f"genlit study {spec.name}: this run ran {ran} trial(s)", flush=True)
    print(progress_line(spec, study), flush=True)
    print(f"genlit: the report: genlit study report {args.study}"
          + (f" --storage {args.storage}" if args.storage else ""), flush=True)


def run_workers(spec: Any, study: Any, storage: Any, slots: list[str], threads: int, poll: float) -> int:
    """One worker thread per device slot; Ctrl-C or SIGTERM stops them and puts their trials back."""
    from genlit.studies.worker import Worker

    stop = threading.Event()
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            print(line, flush=True)

    workers = [
        Worker(spec, study, storage, device=slot, threads=threads, say=say, stop=stop, poll=poll,
               name=f"worker {i}" if len(slots) > 1 else "worker")
        for i, slot in enumerate(slots)
    ]  # fmt: skip
    errors: list[BaseException] = []

    def work(worker: Worker) -> None:
        try:
            worker.run()
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)
            stop.set()

    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    running = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
    try:
        for thread in running:
            thread.start()
        for thread in running:
            while thread.is_alive():
                thread.join(timeout=0.5)
    except KeyboardInterrupt:
        say(f"genlit study {spec.name}: stopping; running trials go back to waiting")
        stop.set()
        for thread in running:
            thread.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if errors:
        raise errors[0]
    if stop.is_set():
        sys.exit(130)
    return sum(w.ran for w in workers)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
