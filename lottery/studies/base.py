"""The contract of a study folder: one record of what the study is, refusing any other study;
and the controls a study trains beside its networks.

A study (an IMP search, a pruning-at-init study, a sweep) records in one JSON file its training
configuration, its own settings, a fingerprint of everything that changes its results, and the
digest of the data it trains on. Rerunning the command resumes the study; a folder that holds
another study (other settings, or the same settings on other data) is refused before anything is
written, naming what differs. Settings in `free` may change when resuming (more rounds, more
sparsities, batching), settings in `grows` may gain items but never lose them (an instability
sweep's pairs), and a setting added after folders were recorded stays out of the fingerprint at
its default (`later`), so those folders still resume.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lottery.core import distributed
from lottery.core.config import NON_RESULT_FIELDS, ConfigError, TrainConfig
from lottery.core.storage import provenance, read_json, write_json
from lottery.pruning.masks import Mask
from lottery.training.runfolder import describe_diff


@dataclass(frozen=True)
class StudyRecord:
    """How one kind of study records itself: file name, the study's name in messages, the key of
    its settings in the record, what may change on resume (and how the command line says it)."""

    file: str  # the record's name in the study folder (from lottery.core.layout)
    what: str  # "an IMP search"
    key: str  # the study's settings in the record: record[key]
    free: tuple[str, ...] = ()
    resumable: str = "nothing"  # "--rounds": what the refusal says may change
    grows: tuple[str, ...] = ()
    later: Mapping[str, Any] = field(default_factory=dict)
    # whether a resumed study's settings replace the recorded ones (default: when they differ)
    rewrite: Callable[[dict, dict], bool] = lambda old, new: old != new

    def fingerprint(self, cfg: TrainConfig, settings: dict[str, Any]) -> str:
        """Short hash of the result-changing training settings and study settings."""
        settings, later = as_json(settings), as_json(dict(self.later))
        fixed = {
            k: v
            for k, v in settings.items()
            if k not in (*self.free, *self.grows) and not (k in later and v == later[k])
        }
        return hashlib.sha256(
            json.dumps([cfg.fingerprint(*NON_RESULT_FIELDS), fixed], sort_keys=True).encode()
        ).hexdigest()[:16]

    def check(
        self,
        out: Path,
        cfg: TrainConfig,
        settings: dict[str, Any],
        digest: str,
        legacy: Callable[[dict], bool] | None = None,
    ) -> None:
        """Refuse `out` if it records another study, or this one on other data (a record from
        before data digests were kept passes). A record in a study's older format (no
        fingerprint) is judged by `legacy(record)`: whether it describes this same study."""
        path = Path(out) / self.file
        if not path.exists():
            return
        old = read_json(path)
        if "fingerprint" not in old and legacy is not None:
            if legacy(old):
                return
            raise self._other(out, str(old))
        settings = as_json(settings)
        for k in self.grows:
            dropped = [x for x in old.get(self.key, {}).get(k, []) if x not in settings[k]]
            if dropped:
                raise ConfigError(
                    f"{out} holds {self.what} with other settings: its {k} {dropped} are not "
                    f"given again ({k} may be added but not dropped); give them again or use a new "
                    "--out directory"
                )
        if old.get("data_digest") not in (None, digest):
            raise ConfigError(
                f"{out} holds {self.what} started on other data (digest {old['data_digest']}, "
                f"now {digest}): the dataset files or --data-root changed; restore them or use a "
                "new --out"
            )
        if old.get("fingerprint") == self.fingerprint(cfg, settings):
            return

        def comparable(train: dict, study: dict) -> dict:
            return {
                "train": {k: v for k, v in train.items() if k not in NON_RESULT_FIELDS},
                self.key: {k: v for k, v in study.items() if k not in (*self.free, *self.grows)},
            }

        before = comparable(old.get("train", {}), old.get(self.key, {}))
        after = comparable(cfg.to_dict(), as_json(settings))
        raise self._other(out, describe_diff(before, after))

    def _other(self, out: Path, differs: str) -> ConfigError:
        return ConfigError(
            f"{out} holds {self.what} with other settings ({differs}); only {self.resumable} may "
            "change when resuming. Use a new --out directory."
        )

    def write(
        self,
        out: Path,
        cfg: TrainConfig,
        settings: dict[str, Any],
        digest: str,
        legacy: Callable[[dict], bool] | None = None,
    ) -> None:
        """Check, then record the study (when new, when `rewrite` says the settings grew, or over
        a record of an older format); under torchrun only rank 0 writes."""
        self.check(out, cfg, settings, digest, legacy)
        path = Path(out) / self.file
        settings = as_json(settings)
        if path.exists() and not self.rewrite(read_json(path).get(self.key, {}), settings):
            return
        if distributed.is_main():
            record = {
                "train": cfg.to_dict(),
                self.key: settings,
                "fingerprint": self.fingerprint(cfg, settings),
                "data_digest": digest,
                **provenance(),
            }
            write_json(record, path)


def as_json(value: Any) -> Any:
    """`value` as a JSON file holds it (tuples as lists), so recorded and given settings compare."""
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class ControlRun:
    """What a control changes about the network it stands beside: a mask of its own (made once
    by `mask`, then kept in the control's folder so a resumed study reuses it), a fresh
    initialisation from `init_seed`, or both; `record` goes into its records (its seeds).
    A control is a function of its study's control input (`lottery.studies.imp.ImpControl`,
    `lottery.studies.at_init.AtInitControl`) registered in that study's controls."""

    mask: Callable[[], Mask] | None = None
    init_seed: int | None = None
    record: dict[str, Any] = field(default_factory=dict)


def stored_mask(path: Path, make: Callable[[], Mask]) -> Mask:
    """The mask in `path`, made and stored by rank 0 the first time; every rank, and any resumed
    study, reads the file."""
    if distributed.is_main() and not path.exists():
        make().save(path)
    distributed.barrier(f"waiting for rank 0 to write {path}")
    return Mask.load(path)
