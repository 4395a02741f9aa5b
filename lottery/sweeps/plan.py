"""A sweep as data: one command, its fixed settings and a grid over some of them, expanded into
points, each a run folder named from the settings that vary.

The grid is crossed (every combination, as `itertools.product`); settings under `zip` vary
together, item by item, and that group is crossed with the grid. Settings use the keys of
`--config` (flag names with underscores); `seed` sets the init and data-order seeds together, as
`--seeds` does. Every point is checked by the command's own parser and configuration before a
sweep writes anything, so a value the command would refuse stops the sweep at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lottery.core.config import ConfigError

# Commands a sweep may run: each writes one folder per run and resumes when rerun.
SWEEP_COMMANDS = (
    "train",
    "imp",
    "prune",
    "at-init",
    "supermask",
    "rewind-sweep",
    "instability",
    "curve",
)
# Flags a sweep sets itself: the point's folder, where its settings come from, progress.
RESERVED = {
    "out": "the sweep names each point's folder",
    "config": "give the settings in the sweep file",
    "no_progress": "the sweep draws one bar over its points",
    "progress": "the sweep draws one bar over its points",
}
SEED = "seed"  # a sweep key: init_seed and data_seed together
_UNSAFE = re.compile(r"[^A-Za-z0-9._:+\-]")


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its folder name and the settings it runs with (fixed and varying)."""

    name: str
    settings: dict[str, Any]
    varying: dict[str, Any]

    def argv(self, out: Path) -> list[str]:
        """The command line that runs this point into `out` (what a user would type)."""
        from lottery.cli.main import settings_flags

        values = dict(self.settings)
        if SEED in values:
            seed = values.pop(SEED)
            values = {"init_seed": seed, "data_seed": seed, **values}
        return [*settings_flags(values), "--out", str(out), "--no-progress"]


@dataclass(frozen=True)
class Sweep:
    """`command` run at every point of `grid` (crossed) and `zip` (varied together), each with
    the fixed `settings`; `lottery.run_sweep(sweep, out)` runs it."""

    command: str
    settings: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    zip: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.command not in SWEEP_COMMANDS:
            raise ConfigError(
                f"sweep command {self.command!r} is not one of {', '.join(SWEEP_COMMANDS)}"
            )
        for part in ("settings", "grid", "zip"):
            if not isinstance(getattr(self, part), Mapping):
                raise ConfigError(f"sweep {part}: expected a mapping of settings")
        for part in ("grid", "zip"):
            for key, values in getattr(self, part).items():
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"sweep {part}.{key}: expected a non-empty list of values")
        for key, values in self.grid.items():  # zipped lists may repeat: their rows differ
            if len({_text(v) for v in values}) != len(values):
                raise ConfigError(f"sweep grid.{key}: repeats a value {values}")
        if not self.grid and not self.zip:
            raise ConfigError("sweep grid is empty: vary at least one setting under grid or zip")
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1:
            raise ConfigError(
                f"sweep zip: lists of different lengths "
                f"({', '.join(f'{k}: {len(v)}' for k, v in self.zip.items())})"
            )
        keys = [*self.settings, *self.grid, *self.zip]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ConfigError(f"sweep sets {twice} more than once (settings, grid, zip)")
        for key in keys:
            if key in RESERVED:
                raise ConfigError(f"sweep key {key!r} cannot be set: {RESERVED[key]}")
        if SEED in keys and ({"init_seed", "data_seed"} & set(keys)):
            raise ConfigError("sweep sets `seed` and init_seed/data_seed: give one or the other")

    def points(self) -> list[Point]:
        """Every point, in the file's order of values; names are unique and sorted by key."""
        zipped = [
            dict(zip(self.zip, vs, strict=True)) for vs in zip(*self.zip.values(), strict=True)
        ] or [{}]
        crossed = [
            dict(zip(self.grid, vs, strict=True)) for vs in itertools.product(*self.grid.values())
        ]
        out, names = [], {}
        for z in zipped:
            for g in crossed:
                varying = {**g, **z}
                name = point_name(varying)
                if name in names:
                    raise ConfigError(
                        f"sweep points {names[name]} and {varying} share the folder name {name!r}"
                    )
                names[name] = varying
                out.append(Point(name, {**self.settings, **varying}, varying))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "settings": self.settings, "grid": self.grid,
                "zip": self.zip}  # fmt: skip


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "+".join(map(_text, value))
    if isinstance(value, dict):
        return "+".join(f"{k}={_text(v)}" for k, v in value.items())
    return str(value)


MAX_NAME = 120  # characters of a point's folder name; longer ones end in a hash of the whole


def point_name(varying: Mapping[str, Any]) -> str:
    """`key=value,key=value` over the varying settings sorted by key (so reordering the file keeps
    the names); characters a shell or filesystem would trip on become `_`, and a name past
    MAX_NAME characters keeps its start and ends in a hash of the whole, so it stays unique."""
    name = ",".join(f"{k}={_UNSAFE.sub('_', _text(varying[k]))}" for k in sorted(varying))
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[: MAX_NAME - 13]}~{digest}"


def read_sweep(path: str | Path) -> Sweep:
    """A sweep from a YAML (.yaml/.yml, needs PyYAML) or JSON file; a malformed file is refused
    naming the key, or the line and column where the parser stopped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"sweep file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"sweep file {path}: not a UTF-8 text file") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(
                f"sweep file {path}: YAML needs PyYAML (pip install 'lottery[yaml]'), or write JSON"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"sweep file {path}: not valid YAML{where}: {_problem(e)}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"sweep file {path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
            ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {path}: expected a mapping with command, settings and grid")
    unknown = sorted(set(data) - {"command", "settings", "grid", "zip"})
    if unknown:
        raise ConfigError(
            f"sweep file {path}: unknown key(s) {unknown}; a sweep has command, settings, grid, zip"
        )
    if "command" not in data:
        raise ConfigError(f"sweep file {path}: no `command` (one of {', '.join(SWEEP_COMMANDS)})")
    try:
        return Sweep(
            data["command"],
            data.get("settings") or {},
            data.get("grid") or {},
            data.get("zip") or {},
        )
    except ConfigError as e:
        raise ConfigError(f"sweep file {path}: {e}") from None


def _problem(e: Exception) -> str:
    return str(getattr(e, "problem", None) or e).strip()


def check_points(sweep: Sweep, points: list[Point], out: Path) -> None:
    """Run every point's command up to its first write (`runfolder.checks_only`): its parser, its
    configuration and every check it makes of data, model and settings. So a setting or value the
    command would refuse stops the sweep before anything is written, naming the point."""
    from lottery.cli.main import build_parser
    from lottery.training.runfolder import ChecksPassed, checks_only

    parser = build_parser([sweep.command])
    for p in points:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args, unknown = parser.parse_known_args([sweep.command, *p.argv(out / p.name)])
            flags = [a[2:].replace("-", "_") for a in unknown if a.startswith("--")]
            if flags:
                raise ConfigError(f"{flags} are not settings of lottery {sweep.command}")
            args.download = False
            with checks_only(), _quiet(), contextlib.redirect_stdout(io.StringIO()):
                args.func(args)
        except ChecksPassed:
            continue
        except SystemExit:
            message = err.getvalue().strip().splitlines()[-1:] or ["invalid settings"]
            reason = message[0].split("error: ", 1)[-1].split(" (see ")[0]
            raise ConfigError(f"point {p.name}: {reason}") from None
        except (ConfigError, ValueError, OSError) as e:
            raise ConfigError(f"point {p.name}: {' '.join(str(e).split())}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No log messages from the commands while their checks run."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
