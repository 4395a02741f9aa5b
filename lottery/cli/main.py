"""The `lottery` command line: one subcommand per capability, sharing one set of training flags.

Each subcommand lives in `lottery.cli.commands.<name>` and provides `add_parser(subparsers)` that
registers itself and sets `func`; shared flags come from `add_train_args`. Only the subcommand
being run is imported, and a command module takes its choices from the torch-free registries
(`lottery.datasets`, `lottery.pruning.names`, `lottery.studies.names`) and imports what trains
inside its `run`: so `lottery --help`, `--version` and every `lottery CMD --help` load no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import traceback
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from lottery import __version__
from lottery.core.config import ConfigError, TrainConfig, field_value
from lottery.datasets import DATASETS
from lottery.pruning.names import ALLOCATIONS, CRITERIA, SCOPES
from lottery.registry import Registry


# Subcommand -> its parser builder (`add_parser(subparsers)` in lottery.cli.commands.<name>, loaded
# only for the command being run) and its one-line help.
def _builtin(name: str, help: str) -> tuple[str, dict[str, str]]:
    return f"lottery.cli.commands.{name.replace('-', '_')}:add_parser", {"help": help}


COMMANDS: Registry = Registry(
    "command",
    {
        "train": _builtin("train", "train a network (resumes if --out holds an unfinished run)"),
        "imp": _builtin("imp", "iterative magnitude pruning: find winning tickets"),
        "schedule": _builtin(
            "schedule", "print or plot pruning schedules (sparsity per step) without training"
        ),
        "prune": _builtin(
            "prune",
            "gradual pruning during training under a schedule (one-shot, AGP, one-cycle, ...)",
        ),
        "overlap": _builtin(
            "overlap", "Jaccard, overlap coefficient and Hamming distance of masks vs chance"
        ),
        "rewind-sweep": _builtin(
            "rewind-sweep",
            "compare rewind points: IMP with weight rewinding to each step, side by side",
        ),
        "align": _builtin(
            "align", "permute network B's hidden units onto A's (weight matching, Git Re-Basin)"
        ),
        "instability": _builtin(
            "instability",
            "linear mode connectivity: error barrier vs the step two copies start from",
        ),
        "curve": _builtin(
            "curve",
            "one-shot pruning curves (layer-wise, structured, global, random) and size on disk",
        ),
        "report": _builtin(
            "report", "figures, tables (markdown, CSV, JSON) and multi-seed statistics of results"
        ),
        "export": _builtin(
            "export", "export a pruned run for inference: compact, sparse (CSR), 2:4 or dense"
        ),
        "speed": _builtin(
            "speed",
            "time inference of a pruned run: dense vs compact, sparse and 2:4, and vs sparsity",
        ),
        "at-init": _builtin(
            "at-init",
            "prune at initialization (SNIP, GraSP, SynFlow, ...) and train, with sanity checks",
        ),
        "supermask": _builtin(
            "supermask",
            "train a mask over frozen random weights (supermask, edge-popup): a strong ticket",
        ),
        "sweep": (
            "lottery.sweeps.command:add_parser",
            {
                "help": "run a grid of runs (seeds, rewind points, criteria, ...) locally, on Ray or Slurm"
            },
        ),
    },
)


def command_help(name: str) -> str:
    """The one-line help of command `name`."""
    return COMMANDS.facts(name)["help"]


def register_command(
    name: str, add_parser: Callable[[argparse._SubParsersAction], None], help: str
) -> None:
    """Add `lottery NAME`: `add_parser(subparsers)` registers its parser and sets `func(args) ->
    exit status`, as each built-in command module does (from an installed plugin, see
    docs/architecture.md)."""
    COMMANDS.register(name, add_parser, help=help)


def parse_ints(text: str) -> tuple[int, ...]:
    """`1,2,3` as a tuple of ints (as for --save-at, --seeds)."""
    return tuple(int(t) for t in text.split(",") if t.strip())


def parse_scales(text: str) -> dict[str, float]:
    """`name=x,name=y` per-tensor rate multipliers (as for --rate-scale)."""
    out = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=MULTIPLIER, got {item!r}")
        out[name.strip()] = float(value)
    return out


def parse_granularity(text: str) -> str:
    """`--granularity`: weight, filter, channel, or an N:M pattern such as 2:4."""
    from lottery.pruning.maskfile import MaskError  # torch loads only when parsing
    from lottery.pruning.selection import check_granularity

    try:
        return check_granularity(text)
    except MaskError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class Choices(list):
    """Registered names, listed by --help and checked by argparse, that also admit a
    "package.module:function" name (a user's own function, loaded when the command runs)."""

    def __contains__(self, value: object) -> bool:
        return super().__contains__(value) or (isinstance(value, str) and ":" in value)


PLUGINS = "lottery.plugins"  # entry-point group: modules imported before the command line is built


def load_plugins() -> None:
    """Import every installed package's `lottery.plugins` entry point, so what it registers
    (criteria, schedules, datasets, models) is usable by name on the command line."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGINS):
        try:
            ep.load()
        except Exception as e:  # a broken plugin is named, not a traceback from lottery
            raise ConfigError(
                f"plugin {ep.name} ({ep.value}) failed to load: {type(e).__name__}: {e}"
            ) from None


def add_mask_args(
    g: argparse._ArgumentGroup, criteria: Iterable[str] | None = None, criterion: str = "magnitude"
) -> None:
    """--granularity and --criterion (from `criteria`, default every registered one)."""
    g.add_argument(
        "--granularity",
        type=parse_granularity,
        default="weight",
        help="weight, filter, channel or N:M (e.g. 2:4: at most N kept in M consecutive inputs)",
    )
    g.add_argument(
        "--criterion",
        choices=Choices(sorted(criteria or CRITERIA)),
        default=criterion,
        help="a registered criterion, or package.module:function for your own",
    )


def add_allocation_args(g: argparse._ArgumentGroup, default: str) -> None:
    """--scope and --allocation: two names for how a sparsity is spread over the layers."""
    g.add_argument(
        "--scope",
        choices=SCOPES,
        default=None,
        help=f"one threshold over all layers (global), each layer alike (layer), or by shape "
        f"(erk, er); default {default}",
    )
    g.add_argument(
        "--allocation",
        choices=ALLOCATIONS,
        default=None,
        help="the same in the words of Evci et al. (ICML 2020): uniform (= --scope layer), "
        "global, erk (Erdős-Rényi-kernel) or er (Erdős-Rényi)",
    )


def scope_from_args(args: argparse.Namespace, default: str) -> str:
    """The mask-engine scope that --scope or --allocation names (`default` if neither does)."""
    allocated = ALLOCATIONS[args.allocation] if args.allocation is not None else None
    if args.scope is not None and allocated is not None and args.scope != allocated:
        raise ConfigError(
            f"--scope {args.scope} and --allocation {args.allocation} disagree; give one"
        )
    return args.scope or allocated or default


def parse_floats(text: str) -> tuple[float, ...]:
    """`0.5,0.75` as a tuple of floats (as for --milestones, --betas)."""
    return tuple(float(t) for t in text.split(",") if t.strip())


def add_config_args(p: argparse.ArgumentParser, helps: dict[str, str] | None = None) -> None:
    """One flag per TrainConfig field, generated from the dataclass: its name, type, help, group,
    choices and default (a field with `paper` metadata is unset until given); `helps` adds to a
    field's help what only a loaded module knows."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if "help" not in meta:
            continue
        if meta["group"] not in groups:
            groups[meta["group"]] = p.add_argument_group(meta["group"])
        g = groups[meta["group"]]
        if "exclusive" in meta:
            if meta["exclusive"] not in exclusive:
                exclusive[meta["exclusive"]] = g.add_mutually_exclusive_group()
            g = exclusive[meta["exclusive"]]
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # X | None: the flag parses X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        name = "--" + f.name.replace("_", "-")
        text = f"{meta['help']}{(helps or {}).get(f.name, '')}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if kind is bool:
            g.add_argument(name, action="store_true", default=default, help=text)
            continue
        parse = {int: int, float: float, str: str}.get(kind)
        if parse is None:  # tuples of ints or floats, comma-separated
            parse = parse_ints if typing.get_args(kind)[0] is int else parse_floats
        g.add_argument(name, type=parse, default=default, choices=meta.get("choices"), help=text)


def add_train_args(p: argparse.ArgumentParser, out_default: str) -> None:
    """Flags shared by every subcommand that trains (same names everywhere): the configuration's
    fields, CUDA fast-path switches, --config, --download, --out and --no-progress."""
    add_config_args(p, {"dataset": f": {', '.join(DATASETS)}"})
    g = p.add_argument_group("files and fast path")
    g.add_argument(
        "--config",
        type=Path,
        default=None,
        help="read settings from a JSON or YAML file (a run's config.json or a search's imp.json "
        "reruns it); flags given on the command line override the file",
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="download a missing dataset into --data-root (never done otherwise)",
    )
    g.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay each step as CUDA graphs (torch.compile mode reduce-overhead; CUDA only, "
        "for small static-shape models)",
    )
    g.add_argument(
        "--no-channels-last",
        action="store_true",
        help="keep conv nets in NCHW on CUDA (channels_last is the CUDA default; CPU unaffected)",
    )
    g.add_argument(
        "--out",
        type=Path,
        default=Path(out_default),
        help="run directory (rerunning the same command resumes it)",
    )
    add_progress_flag(p)


def add_batch_args(p: argparse.ArgumentParser, what: str) -> None:
    """--seeds and --batched: several seeds side by side, trained as one stacked model."""
    g = p.add_argument_group("many runs at once")
    g.add_argument(
        "--seeds",
        type=parse_ints,
        default=None,
        help=f"one {what} per seed (init and data-order seed, replacing --init-seed/--data-seed) "
        "in OUT/seed_<s>/, run side by side, e.g. 0,1,2",
    )
    g.add_argument(
        "--batched",
        action="store_true",
        help="train runs that share architecture and settings as one stacked model: "
        "one step for all, results equal to separate runs to float tolerance",
    )


def _fast_path(args: argparse.Namespace) -> dict:
    """CUDA fast-path switches, kept in `extra` only when they differ from the defaults."""
    out: dict = {}
    if args.cuda_graphs:
        out["cuda_graphs"] = True
    if args.no_channels_last:
        out["channels_last"] = False
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A TrainConfig from parsed flags; the library resolves unset ones to the paper defaults."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if f.name != "extra" and getattr(args, f.name) is not None}  # fmt: skip
    return TrainConfig(**given, extra=_fast_path(args))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default in --help unless it is unset (None, False) or the help names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False
        if unset or action.default == argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser (and subparsers) whose --help shows defaults and whose argument errors
    are one line `lottery CMD: error: ...` (exit 2), pointing at --help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    """`--no-progress` / `--progress` (accepted by every command): bars are drawn on a terminal
    only, so a log file or a pipe gets results, not redraws, unless --progress asks for them."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument(
        "--progress",
        action="store_true",
        help="draw progress bars even when stderr is not a terminal (default: on a terminal only)",
    )


def show_progress(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: --progress, else on a terminal unless --no-progress."""
    return args.progress or (not args.no_progress and sys.stderr.isatty())


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; with `commands`, only those subcommands' modules are imported and the
    others are listed by name and help alone (what `main` does, so start-up stays light)."""
    parser = Parser(
        prog="lottery",
        description="Find and study lottery tickets: IMP, rewinding, pruning schedules, mask analysis.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    full = set(COMMANDS if commands is None else commands)
    for name in COMMANDS:
        if name in full:
            COMMANDS[name](sub)
        else:
            sub.add_parser(name, help=command_help(name))
    return parser


# Exit statuses: 2 for what the user can fix (input, paths, a busy folder), 3 for running out of
# memory, 1 for an internal error (a bug), with its traceback.
EXIT_USER, EXIT_MEMORY, EXIT_BUG = 2, 3, 1


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input (imported late: `lottery --help` loads no torch)."""
    from lottery.core.distributed import DistributedError
    from lottery.core.storage import CheckpointError
    from lottery.training.runfolder import FolderInUseError

    return (ConfigError, ValueError, CheckpointError, FolderInUseError, DistributedError, OSError)


def out_of_memory(e: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return isinstance(e, MemoryError) or (
        torch is not None and isinstance(e, torch.cuda.OutOfMemoryError)
    )


def _one_line(e: BaseException) -> str:
    """An exception's message as one line; OS errors name their path first."""
    if isinstance(e, OSError) and e.filename is not None:
        text = f"{e.filename}: {e.strerror or e}"
        return f"{text} ({e.filename2})" if e.filename2 else text
    return " ".join(str(e).split()) or type(e).__name__


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
# Recorded names whose flag is spelled otherwise (IMP's fraction, a gradual run's pruning).
RENAMED = {"fraction": "prune_fraction", "every": "update_every", "seed": "prune_seed"}


def read_settings(path: Path) -> dict[str, Any]:
    """Settings from a JSON or YAML file, by flag destination: plain `name: value` pairs, a run's
    config.json (its "config") or a search's imp.json (its "train" and "imp" settings)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--config {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"--config {path}: not a UTF-8 text file (give a JSON or YAML file)"
        ) from None
    yaml_file = path.suffix in (".yaml", ".yml")
    if yaml_file:
        try:
            import yaml
        except ImportError:
            raise ConfigError(
                f"--config {path}: YAML files need PyYAML (pip install 'lottery[yaml]')"
            ) from None
    try:
        data = yaml.safe_load(text) if yaml_file else json.loads(text)
    except ValueError as e:  # JSON and YAML parse errors
        raise ConfigError(f"--config {path}: not valid {path.suffix[1:] or 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings")
    if "config" in data:
        data = data["config"]
    elif "train" in data and "imp" in data:
        data = {**data["train"], **data["imp"]}
    flat = {k: v for k, v in data.items() if k != "extra"}
    extra = dict(data.get("extra") or {})
    flat["cuda_graphs"] = extra.pop("cuda_graphs", False)
    flat["no_channels_last"] = not extra.pop("channels_last", True)
    flat.update(extra.pop("supermask", None) or {})  # a supermask run's own flags
    pruning = extra.pop("pruning", None)
    if pruning is not None:
        schedule = pruning.pop("schedule")
        flat.update(schedule.pop("params"), schedule=schedule.pop("name"), **schedule, **pruning)
    if extra:
        raise ConfigError(f"--config {path}: unknown settings {sorted(extra)} in extra")
    try:  # a training setting of the wrong kind is named here, not misread as flags
        flat = {k: field_value(k, v) if k in FIELDS else v for k, v in flat.items()}
    except ConfigError as e:
        raise ConfigError(f"--config {path}: {e}") from None
    return {RENAMED.get(k, k): v for k, v in flat.items()}


def settings_flags(values: dict[str, Any]) -> list[str]:
    """Settings as command-line flags (so they are parsed exactly as typed flags are)."""
    out: list[str] = []
    for name, v in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(v, bool):
            out += [flag] if v else []
        elif isinstance(v, list | tuple):
            out += [flag, ",".join(map(str, v))]
        elif isinstance(v, dict):
            out += [flag, ",".join(f"{k}={x}" for k, x in v.items())]
        elif v is not None:
            out += [flag, str(v)]
    return out


def with_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; with --config FILE, the file's settings are parsed as flags placed before
    the command line's own, so that flags given on the command line win."""
    path = next((Path(b) for a, b in zip(argv, argv[1:], strict=False) if a == "--config"), None)
    path = next((Path(a[9:]) for a in argv if a.startswith("--config=")), path)
    command = next((a for a in argv if not a.startswith("-")), None)
    if path is None or command is None:
        return parser.parse_args(argv)
    values = read_settings(path)
    if any(a.split("=")[0] in ("--steps", "--epochs") for a in argv):  # one length only
        values = {k: v for k, v in values.items() if k not in ("steps", "epochs")}
    i = argv.index(command) + 1
    args, unknown = parser.parse_known_args([*argv[:i], *settings_flags(values), *argv[i:]])
    if unknown:
        raise ConfigError(
            f"--config {path}: {[a[2:].replace('-', '_') for a in unknown if a[:2] == '--']} are "
            f"not settings of lottery {command}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lottery` console script; bad input exits 2 with a one-line reason.

    Results go to stdout; progress bars and log messages (the library's `logging`) to stderr.
    """
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        load_plugins()
        args = with_config_file(build_parser([command] if command in COMMANDS else []), argv)
    except SystemExit as e:  # --help, --version (0) or a one-line argument error (2)
        return e.code if isinstance(e.code, int) else EXIT_USER
    except ConfigError as e:
        print(f"lottery{f' {command}' if command else ''}: error: {e}", file=sys.stderr)
        return EXIT_USER
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    prog = f"lottery {args.command}"
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        if out_of_memory(e):
            print(
                f"{prog}: error: out of memory ({_one_line(e).split('.')[0]}); try a smaller "
                "--batch-size, fewer runs per batch (no --batched, fewer --seeds) or a larger device",
                file=sys.stderr,
            )
            return EXIT_MEMORY
        if isinstance(e, user_errors()):
            print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
            return EXIT_USER
        traceback.print_exc()
        print(
            f"{prog}: internal error: {type(e).__name__}: {_one_line(e)} -- a bug in lottery, "
            "not in your input; please report it with the traceback above",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
