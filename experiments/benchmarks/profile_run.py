"""Where a short run's time goes: `lottery train` and `lottery prune` end to end, phase by phase.

Each command runs in a fresh process whose phases are timed by wall-clock wrappers around the
functions that do them (exclusive of one another): imports (torch and the command's modules),
data (find, read, split, normalise), model (build and initialise), threads (the default thread
count's one forward pass), evaluation, checkpoints, records (config, metrics, summaries),
pruning (mask updates) and compaction (mask.npz, weights.npz); the training steps are the loop's
own time, and "other" what no wrapper covers (argument parsing, checks, interpreter exit). Only
the main thread's time counts: a checkpoint written in the background costs the run the copy
it takes and any wait for the write, and a start-of-run evaluation scored beside training
costs it the wait for its result, if any. `prune` runs three ways: at the defaults, at the evaluation
batch of 2048 that every run used before batches were sized to the device, and with
--skip-start-eval. Medians over --repeats runs, each in its own process.

    python -m experiments.benchmarks.profile_run --model conv2 --steps 50 --train-limit 6400
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# phase -> the functions ("module:qualname") whose exclusive time it sums
PHASES = {
    "data": ["lottery.training.setup:load_data"],
    "model": ["lottery.training.setup:make_model"],
    "threads": ["lottery.core.device:default_threads"],
    "evaluation": [
        "lottery.training.stacked:evaluate",
        "lottery.training.engine:StartRecord.finish",
    ],
    "checkpoints": [
        "lottery.core.storage:save_checkpoint",
        "lottery.core.storage:load_checkpoint",
        "lottery.training.run:Run.checkpoint",
        "lottery.training.run:Run.wait_for_writes",
    ],
    "records": [
        "lottery.core.storage:write_json",
        "lottery.core.storage:write_jsonl",
        "lottery.training.run:Run.log",
    ],
    "pruning": ["lottery.training.engine:prune"],
    "compaction": ["lottery.training.run:Run.finish_files"],
    "training steps": ["lottery.training.engine:Engine.loop"],
}
ORDER = ["imports", *PHASES, "other"]

# Runs in the child: time the imports, wrap every phase's function, run the command, report.
CHILD = r"""
import json, sys, threading, time
t_start = time.perf_counter()
import torch
import lottery.cli.main, lottery.studies.gradual, lottery.training.trainer, lottery.training.engine
t_imported = time.perf_counter()
import importlib
phases, spent, stack = json.loads(sys.argv[1]), {}, []

def wrap(phase, fn):
    def timed(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)  # a background write: the run does not wait for it
        stack.append(0.0)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            took = time.perf_counter() - t0
            inner = stack.pop()
            spent[phase] = spent.get(phase, 0.0) + took - inner
            if stack:
                stack[-1] += took
    return timed

for phase, targets in phases.items():
    for target in targets:
        module, _, name = target.partition(":")
        owner = importlib.import_module(module)
        *path, attr = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, attr)
        timed = wrap(phase, original)
        setattr(owner, attr, timed)
        for mod in list(sys.modules.values()):  # names imported elsewhere by `from ... import`
            if not path and getattr(mod, "__name__", "").startswith("lottery"):
                if getattr(mod, attr, None) is original:
                    setattr(mod, attr, timed)

status = lottery.cli.main.main(sys.argv[2:])
spent["imports"] = t_imported - t_start
spent["total"] = time.perf_counter() - t_start
print("PROFILE " + json.dumps(spent), file=sys.stderr)
sys.exit(status)
"""


def profile(command: list[str], repeats: int) -> dict[str, float]:
    """Median seconds per phase of `lottery COMMAND...` over `repeats` fresh processes."""
    runs = []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            argv = [*command, "--out", str(Path(d) / "run"), "--no-progress"]
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(PHASES), *argv],
                                  env=env, cwd=REPO, capture_output=True, text=True)  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"lottery {' '.join(command)} failed:\n{done.stderr}")
            line = next(x for x in done.stderr.splitlines() if x.startswith("PROFILE "))
            spent = json.loads(line.removeprefix("PROFILE "))
            spent["other"] = spent["total"] - sum(v for k, v in spent.items() if k != "total")
            runs.append(spent)
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in [*ORDER, "total"]}


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: seconds and share of the total per phase, one column pair per command."""
    names = list(results)
    lines = ["| phase | " + " | ".join(f"{n} (s) | share" for n in names) + " |",
             "|---" * (1 + 2 * len(names)) + "|"]  # fmt: skip
    for phase in [*ORDER, "total"]:
        cells = []
        for n in names:
            seconds, total = results[n][phase], results[n]["total"]
            cells += [f"{seconds:.3f}", f"{100 * seconds / total:.0f}%"]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="conv2")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--train-limit", type=int, default=6400)
    p.add_argument("--val-size", type=int, default=640)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    common = ["--model", args.model, "--dataset", "fashion_mnist", "--steps", str(args.steps),
              "--train-limit", str(args.train_limit), "--val-size", str(args.val_size),
              "--test-limit", str(args.test_limit), "--threads", str(args.threads),
              "--device", "cpu"]  # fmt: skip
    prune = ["prune", *common, "--schedule", "agp", "--final-sparsity", "0.8",
             "--update-every", "10"]  # fmt: skip
    commands = {
        "train": ["train", *common],
        "prune": prune,
        "prune, eval batch 2048": [*prune, "--eval-batch", "2048"],
        "prune, no start eval": [*prune, "--skip-start-eval"],
    }
    results = {name: profile(cmd, args.repeats) for name, cmd in commands.items()}
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
