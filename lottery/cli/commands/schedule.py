"""`lottery schedule`: print (and optionally plot) pruning schedules without training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lottery.cli.main import add_progress_flag, command_help
from lottery.core.config import ConfigError
from lottery.pruning.schedules import (
    SCHEDULES,
    Schedule,
    resolve,
    schedule_flags,
    schedule_params,
)


def add_schedule_args(p: argparse.ArgumentParser, units: tuple[str, ...]) -> None:
    """Flags that define a schedule (shared by `schedule` and `prune`)."""
    g = p.add_argument_group("pruning schedule")
    g.add_argument(
        "--final-sparsity", type=float, required=True, help="sparsity at the window end, in [0, 1)"
    )
    g.add_argument(
        "--initial-sparsity",
        type=float,
        default=0.0,
        help="sparsity before the window (exponential needs > 0)",
    )
    g.add_argument("--start", type=float, default=0.0, help="pruning window start (see --unit)")
    g.add_argument("--end", type=float, default=1.0, help="pruning window end (see --unit)")
    g.add_argument(
        "--unit",
        choices=units,
        default="fraction",
        help="unit of --start/--end: fraction of training, epochs or steps",
    )
    for param in schedule_flags():  # each registered schedule's own parameters
        flag = "--" + param.name.replace("_", "-")
        if flag not in p._option_string_actions:  # a name taken by another flag: Python only
            g.add_argument(flag, dest=param.name, type=param.kind, default=None, help=param.help)


def schedules_from_args(names: list[str], args: argparse.Namespace) -> list[Schedule]:
    """One Schedule per name; a schedule option that none of the names takes is an error."""
    flags = [p.name for p in schedule_flags()]
    given = {k: getattr(args, k) for k in flags if getattr(args, k, None) is not None}
    used: set[str] = set()
    out = []
    for name in names:
        takes = schedule_params(resolve(name))
        params = {k: v for k, v in given.items() if k in takes}
        used |= set(params)
        out.append(
            Schedule(
                name,
                args.final_sparsity,
                args.initial_sparsity,
                args.start,
                args.end,
                args.unit,
                params,
            )
        )
    unused = sorted(set(given) - used)
    if unused:
        flag = "--" + unused[0].replace("_", "-")
        raise ConfigError(f"{flag} applies to none of the schedules {', '.join(names)}")
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "schedule",
        help=command_help("schedule"),
        description="Print CSV `step,sparsity` for steps 0..N (several names: one column each); "
        f"built-in schedules: {', '.join(SCHEDULES)}; or module:function for your own "
        "f(p, s_i, s_f) of window progress p.",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="schedule name(s)")
    p.add_argument("--steps", type=int, default=100, help="N: steps in the run (default 100)")
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="also draw the curves (in %%, as steps) into this image (.png, .pdf or .svg)",
    )
    add_progress_flag(p)
    add_schedule_args(p, ("fraction", "step"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.plot is not None and args.plot.suffix not in (".png", ".pdf", ".svg"):
        raise ConfigError(f"--plot {args.plot}: give a .png, .pdf or .svg file name")
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if len(set(args.names)) != len(args.names):
        raise ConfigError("a schedule is named twice")
    schedules = schedules_from_args(args.names, args)
    if args.plot is not None:  # before the CSV is printed, so a failure prints nothing
        from lottery.training.runfolder import check_writable

        check_writable(args.plot, "--plot", folder=False)
    curves = {s.name: s.curve(args.steps) for s in schedules}
    header = "sparsity" if len(curves) == 1 else ",".join(curves)
    print(f"step,{header}")
    for step in range(args.steps + 1):
        print(f"{step}," + ",".join(f"{c[step]:.6f}" for c in curves.values()))
    if args.plot is not None:
        from lottery.analysis import plots  # matplotlib loads only when a figure is drawn

        plots.save(plots.schedule_curves(curves), args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)  # stderr: stdout is the CSV
    return 0
