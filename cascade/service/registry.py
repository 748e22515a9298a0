"""The indexes a service answers for: one cascade per config file, each with its own version and fingerprint.

A registry is built whole and then swapped in with one assignment, so a
request sees either the old generation or the new one, never a mix; requests
already running finish on the cascade they started with.

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

from cascade.config import IndexConfig, load_config_dir, load_config_file
from cascade.controller import Cascade
from cascade.errors import ConfigError
from cascade.settings import Settings

log = logging.getLogger(__name__)

Status = Literal["loading", "ready", "unavailable"]


@dataclass(frozen=True)
class ConfigSource:
    """Where configs come from: every NAME.yaml in a folder, or a fixed list of files (the demo's one index)."""

    directory: Path | None = None
    files: tuple[Path, ...] = ()

    def read(self) -> dict[str, tuple[IndexConfig, Path]]:
        """Parse and validate every config; the first bad file raises ConfigError (file, key, reason)."""
        if self.directory is not None:
            cfgs = load_config_dir(self.directory)
            if not cfgs:
                raise ConfigError(str(self.directory), "", "no NAME.yaml config files; the service would have no index")
            return {n: (c, self.directory / f"{n}.yaml") for n, c in cfgs.items()}
        out: dict[str, tuple[IndexConfig, Path]] = {}
        for p in self.files:
            c = load_config_file(p)
            out[c.index] = (c, p)
        return out

    def describe(self) -> str:
        return str(self.directory) if self.directory is not None else ", ".join(map(str, self.files))


@dataclass
class IndexEntry:
    name: str
    config: IndexConfig
    source: Path
    status: Status = "loading"
    cascade: Cascade | None = None
    error: str | None = None
    fingerprint: str | None = None
    opened_s: float = 0.0

    @property
    def version(self) -> str:
        return self.config.version


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


def _stamp(path: Any) -> list[Any] | None:
    """Size and mtime of a model's files, so that a model retrained in place gets new cache keys."""
    try:
        p = Path(str(path))
        if p.is_file():
            st = p.stat()
            return [p.name, st.st_size, st.st_mtime_ns]
        if p.is_dir():
            return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(p.iterdir()) if f.is_file()]
    except OSError:
        return None
    return None


def fingerprint(cascade: Cascade) -> str:
    """Hash of everything a cached answer depends on besides the request: config, models and the built index."""
    stamps = []
    for st in cascade.stages:
        model = getattr(st, "model", None)
        scorer = getattr(st, "scorer", None)
        where = getattr(model, "folder", None) or getattr(scorer, "name", None)
        stamps.append([st.name, _stamp(where) if where else None])
    manifest = getattr(cascade.documents, "manifest", None)
    blob = {
        "config": cascade.config.model_dump(mode="json"),
        "plan": cascade.plan(),
        "models": stamps,
        "index": {k: manifest.get(k) for k in ("built_at", "docs", "fingerprint", "embedder")} if isinstance(manifest, dict) else None,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe_hash(desc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def open_index(cfg: IndexConfig, source: Path, settings: Settings, pair_store: Any = None,
               on_pair_lookup: Callable[[str, int, int], None] | None = None, strict: bool = False) -> IndexEntry:
    """Open the backend and load the models of one index (blocking: run it in a thread).

    ``strict``: a ConfigError propagates (a reload rejects it) instead of
    leaving the index unavailable (start-up keeps serving the others).
    """
    t0 = time.perf_counter()
    entry = IndexEntry(cfg.index, cfg, source)
    try:
        casc = Cascade.from_config(cfg, settings)
    except ConfigError:
        if strict:
            raise
        log.exception("index %s cannot be opened", cfg.index)
        entry.status, entry.error = "unavailable", _reason()
        return entry
    except Exception:  # a missing index, an unreachable cluster, a model that will not load
        log.exception("index %s cannot be opened", cfg.index)
        entry.status, entry.error = "unavailable", _reason()
        return entry
    if cfg.cache.pair_scores and pair_store is not None:
        wrap_pair_scorers(casc, pair_store, cfg.cache.pair_scores_ttl_s, on_pair_lookup)
    entry.cascade = casc
    entry.fingerprint = fingerprint(casc)
    entry.opened_s = time.perf_counter() - t0
    return entry


def _reason() -> str:
    import sys

    exc = sys.exc_info()[1]
    return f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"


def wrap_pair_scorers(casc: Cascade, store: Any, ttl_s: float,
                      on_lookup: Callable[[str, int, int], None] | None = None) -> int:
    """Put a pair-score cache in front of every stage that scores with a ``scorer`` (the cross-encoder).

    Stages expose their scorer as an attribute; wrapping it after the build
    keeps the stages unaware of caching. Returns how many were wrapped.
    """
    from connectors.score_cache import CachedPairScorer

    n = 0
    for st in casc.stages:
        scorer = getattr(st, "scorer", None)
        if scorer is None or not callable(getattr(scorer, "score", None)) or isinstance(scorer, CachedPairScorer):
            if getattr(st, "kind", None) == "cross_encoder":
                log.warning("stage %s exposes no scorer; its pair scores are not cached", st.name)
            continue
        desc = st.describe() if hasattr(st, "describe") else {"name": st.name, "model": getattr(scorer, "name", "")}
        hook = (lambda hit, miss, _n=casc.config.index: on_lookup(_n, hit, miss)) if on_lookup else None
        st.scorer = CachedPairScorer(scorer, store, ttl_s, describe_hash({k: v for k, v in desc.items()
                                                                          if k not in ("rerank", "keep", "name")}), hook)
        n += 1
    return n
