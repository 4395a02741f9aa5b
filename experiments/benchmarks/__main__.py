"""Run every benchmark in the project and print one markdown table.

Each `experiments/benchmarks/bench_<name>.py` module with `run(quick, device) -> list[Row]` joins
the table on its own (found with pkgutil). `--quick` keeps the whole table to about two minutes
on two CPU cores; `--out FILE` also writes it with the date, torch version and machine.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import pkgutil
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

import experiments.benchmarks as package
from experiments.benchmarks.common import Row, markdown
from lottery import ConfigError, resolve_device, write_bytes_atomic

PREFIX = "bench_"


def discover() -> list[str]:
    """Names (without the prefix) of the benchmark modules present, sorted."""
    return sorted(
        m.name.removeprefix(PREFIX)
        for m in pkgutil.iter_modules(package.__path__)
        if m.name.startswith(PREFIX)
    )


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> str:
    """One line naming where the figures come from."""
    cores = f"{torch.get_num_threads()} threads"
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return f"{platform.platform()}, CPU {cpu_model()} ({cores}){gpu}"


def header(device: str, quick: bool, seconds: float) -> str:
    """Where and when the table was measured."""
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    mode = "--quick" if quick else "full"
    return (
        f"Measured {date} with torch {torch.__version__} ({mode}, {seconds:.0f} s) on "
        f"{machine(device)}."
    )


def run_all(names: list[str], quick: bool, device: str) -> tuple[list[Row], list[str]]:
    """Rows of every named benchmark; a benchmark that fails is reported and the rest still run."""
    rows: list[Row] = []
    failed: list[str] = []
    for name in names:
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"{package.__name__}.{PREFIX}{name}")
            rows += module.run(quick=quick, device=device)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return rows, failed


def main(argv: list[str] | None = None) -> int:
    known = discover()
    ap = argparse.ArgumentParser(prog="python -m experiments.benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short runs (about 2 minutes in all)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="NAME",
        help=f"run only these (repeatable or comma-separated), from: {', '.join(known)}",
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    names = known
    if args.only:
        names = [n for item in args.only for n in item.split(",") if n]
        unknown = sorted(set(names) - set(known))
        if unknown:
            ap.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(known)}")
    try:
        device = resolve_device(args.device).type
    except ConfigError as e:
        ap.error(str(e))
    t0 = time.perf_counter()
    rows, failed = run_all(names, args.quick, device)
    text = markdown(rows) + "\n\n" + header(device, args.quick, time.perf_counter() - t0) + "\n"
    if failed:
        text += f"\nFailed (see the log): {', '.join(failed)}\n"
    print(text)
    if args.out is not None:
        write_bytes_atomic(text.encode(), args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
