"""The indexes a service answers for: one opened index per config file, with a cascade per rank profile.

A registry is built whole and then swapped in with one assignment, so a
request sees either the old generation or the new one, never a mix; requests
already running finish on the cascade they started with, and the old
generation's indexes are closed (HTTP clients, batcher threads, mmaps,
cluster sessions) once the last of those requests is done.

At start-up an index whose backend or models cannot be opened is kept as
``unavailable`` with the reason (it answers 503, ``/readyz`` fails) while the
others serve. A reload is stricter: a config error anywhere, or an index that
serves now and would stop, rejects the whole reload and the running cascades
stay.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from cascade.builder import OpenedIndex, open_index
from cascade.config import BUILTIN_CONFIG_DIR, IndexConfig, load_config_dir, load_config_file
from cascade.controller import Cascade
from cascade.errors import ConfigError
from cascade.settings import Settings
from cascade.text import public_reason

log = logging.getLogger(__name__)

Status = Literal["loading", "ready", "unavailable"]


@dataclass(frozen=True)
class ConfigSource:
    """Where configs come from: every NAME.yaml in a folder, or a fixed list of files (the demo's one index).

    ``builtin_fallback``: the built-in configs (``cascade/configs``) whose embedded
    index is built serve too, unless the folder has a config of the same name; a
    folder that does not exist then just adds nothing (the default of `cascade serve`).
    """

    directory: Path | None = None
    files: tuple[Path, ...] = ()
    builtin_fallback: bool = False
    index_dir: Path | None = None  # where built embedded indexes are looked for (builtin_fallback)

    def read(self) -> dict[str, tuple[IndexConfig, Path]]:
        """Parse and validate every config; the first bad file raises ConfigError (file, key, reason)."""
        out: dict[str, tuple[IndexConfig, Path]] = {}
        if self.directory is not None:
            directory = self.directory.absolute()  # errors name files by their full path
            if directory.is_dir() or not self.builtin_fallback:
                cfgs = load_config_dir(directory)
                out.update({n: (c, directory / f"{n}.yaml") for n, c in cfgs.items()})
            if self.builtin_fallback:
                for p in sorted(BUILTIN_CONFIG_DIR.glob("*.yaml")):
                    if p.stem not in out and self._built(p.stem):
                        out[p.stem] = (load_config_file(p), p)
            if not out:
                where = str(self.directory) + (" (and no built-in config has a built index)" if self.builtin_fallback else "")
                raise ConfigError(where, "", "no NAME.yaml config files; the service would have no index "
                                             "(`cascade index --dataset scifact` builds the demo's)")
            return out
        for p in self.files:
            c = load_config_file(p)
            out[c.index] = (c, p.absolute())
        return out

    def _built(self, name: str) -> bool:
        return self.index_dir is not None and (Path(self.index_dir) / name / "manifest.json").is_file()

    def describe(self) -> str:
        return str(self.directory) if self.directory is not None else ", ".join(map(str, self.files))


@dataclass
class IndexEntry:
    name: str
    config: IndexConfig
    source: Path
    status: Status = "loading"
    opened: OpenedIndex | None = None
    error: str | None = None  # why it cannot serve, as public answers show it (no server paths)
    detail: str | None = None  # the same with everything, for the log and the admin's reload answer
    fingerprints: dict[str, str] = field(default_factory=dict)  # per profile
    opened_s: float = 0.0
    active: int = 0  # searches running on this entry's cascades
    retired: bool = False  # replaced by a reload: closed once ``active`` drops to 0

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def cascade(self) -> Cascade | None:
        """The default profile's cascade."""
        return self.opened.cascade() if self.opened is not None else None

    @property
    def fingerprint(self) -> str | None:
        return self.fingerprints.get(self.opened.default_profile) if self.opened is not None else None

    def profiles(self) -> list[str]:
        return list(self.opened.profiles) if self.opened is not None else self.config.profile_names()

    def fail(self, reason: str) -> None:
        """Mark the index unavailable: the full reason for logs and admins, a path-free one for everyone else."""
        self.status, self.detail, self.error = "unavailable", reason, public_reason(reason)


@dataclass
class Registry:
    entries: dict[str, IndexEntry] = field(default_factory=dict)
    generation: int = 0

    def names(self) -> list[str]:
        return sorted(self.entries)

    @property
    def status(self) -> Literal["ready", "loading", "unavailable"]:
        states = {e.status for e in self.entries.values()}
        if "loading" in states:
            return "loading"
        return "unavailable" if "unavailable" in states or not states else "ready"


def fingerprint(cascade: Cascade) -> str:
    """Hash of everything a cached answer of this profile depends on besides the request.

    The profile's config and plan, every stage's model stamp (weights on disk,
    as each stage declares it) and the built index's manifest.
    """
    manifest = getattr(cascade.documents, "manifest", None)
    blob = {
        "profile": cascade.profile,
        "config": cascade.config.model_dump(mode="json"),
        "plan": cascade.plan(),
        "models": [[st.name, st.model_stamp()] for st in cascade.stages],
        "index": {k: manifest.get(k) for k in ("built_at", "docs", "fingerprint", "embedder")} if isinstance(manifest, dict) else None,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def open_entry(cfg: IndexConfig, source: Path, settings: Settings, pair_store: Any = None,
               on_pair_lookup: Callable[[str, int, int], None] | None = None, strict: bool = False) -> IndexEntry:
    """Open the backend and load the models of one index, all profiles (blocking: run it in a thread).

    ``strict``: a ConfigError propagates (a reload rejects it) instead of
    leaving the index unavailable (start-up keeps serving the others).
    """
    t0 = time.perf_counter()
    entry = IndexEntry(cfg.index, cfg, source)
    try:
        entry.opened = open_index(cfg, settings, pair_store=pair_store, on_pair_lookup=on_pair_lookup,
                                  file=str(source))
    except ConfigError:
        if strict:
            raise
        log.exception("index %s cannot be opened", cfg.index)
        entry.fail(_reason())
        return entry
    except Exception:  # a missing index, an unreachable cluster, a model that will not load
        log.exception("index %s cannot be opened", cfg.index)
        entry.fail(_reason())
        return entry
    entry.fingerprints = {n: fingerprint(c) for n, c in entry.opened.profiles.items()}
    entry.opened_s = time.perf_counter() - t0
    return entry


def _reason() -> str:
    import sys

    exc = sys.exc_info()[1]
    return f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
