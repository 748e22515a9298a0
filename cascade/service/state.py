"""What one running service holds: the registry of cascades, the cache, the guards and the metrics.

Indexes are opened in the background after start-up, one at a time, so
``/healthz`` answers at once and ``/readyz`` says which index is still loading
or why one could not be opened. Each opened cascade runs one warm-up search
(lazy parts such as the query embedder load there, not on a user's request)
before it is marked ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from cascade.errors import ConfigError
from cascade.query import Query
from cascade.service.concurrency import Admission, SingleFlight
from cascade.service.errors import ApiError, from_config_error
from cascade.service.metrics import Metrics
from cascade.service.registry import ConfigSource, IndexEntry, Registry, open_entry
from cascade.settings import Settings
from connectors.cache import ResultCache, make_cache

log = logging.getLogger(__name__)

WARMUP_QUERY = "cascade warm-up query"


class ServiceState:
    def __init__(self, settings: Settings, source: ConfigSource):
        self.settings, self.source = settings, source
        self.metrics = Metrics()
        self.cache: ResultCache = make_cache(settings, on_error=self._cache_error)
        self.pair_store: Any = None
        self.registry = Registry()
        self.singleflight: SingleFlight = SingleFlight()
        self.admission = self._admission()
        self.reload_lock = asyncio.Lock()
        self.loader: asyncio.Task | None = None
        self.started_at = time.time()
        self._closing: set[asyncio.Task] = set()
        # Experiments, assignment and events (cascade.service.experiments.Experiments): set by create_app, which
        # wires the parts together, so that this module needs none of them.
        self.experiments: Any = None

    # ------------------------------------------------------------------ wiring

    def _admission(self) -> Admission:
        s = self.settings
        return Admission(s.max_concurrent_searches, s.max_queued_searches, max_wait_s=s.max_queue_wait_s)

    def _cache_error(self, op: str, exc: BaseException) -> None:
        self.metrics.cache_errors.labels(self.cache.backend, op).inc()

    def _pair_error(self, op: str, exc: BaseException) -> None:
        self.metrics.cache_errors.labels(getattr(self.pair_store, "backend", "?"), op).inc()

    def _pair_lookup(self, index: str, hit: int, miss: int) -> None:
        if hit:
            self.metrics.pair_cache.labels(index, "hit").inc(hit)
        if miss:
            self.metrics.pair_cache.labels(index, "miss").inc(miss)

    def _pair_store_for(self, entry_config: Any) -> Any:
        if not entry_config.cache.pair_scores:
            return None
        if self.pair_store is None:
            from connectors.score_cache import make_pair_store

            self.pair_store = make_pair_store(self.settings, on_error=self._pair_error)
        return self.pair_store

    def source_configs(self) -> list[Any]:
        """The configs of the current registry (what start-up read)."""
        return [e.config for e in self.registry.entries.values()]

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Read every config now (a bad file stops start-up), open the indexes in the background."""
        # Guards bind to the running loop: build them here, not when the app object is made.
        self.admission = self._admission()
        self.reload_lock = asyncio.Lock()
        self.singleflight = SingleFlight()
        configs = self.source.read()
        self.registry = Registry({n: IndexEntry(n, c, p) for n, (c, p) in configs.items()}, generation=1)
        if self.experiments is not None:
            await self.experiments.start()
        self.loader = asyncio.create_task(self._open_all(configs))

    async def stop(self) -> None:
        if self.loader is not None and not self.loader.done():
            self.loader.cancel()
            try:
                await self.loader
            except (asyncio.CancelledError, Exception):
                pass
        if self.experiments is not None:
            await self.experiments.stop()
        for entry in self.registry.entries.values():
            await self._close(entry)
        await self.cache.close()
        if self.pair_store is not None:
            await self.pair_store.close()

    async def _open(self, name: str, cfg: Any, path: Any, strict: bool) -> IndexEntry:
        entry = await asyncio.to_thread(open_entry, cfg, path, self.settings, self._pair_store_for(cfg),
                                        self._pair_lookup, strict)
        await self._warm(entry)
        return entry

    async def _warm(self, entry: IndexEntry) -> None:
        """One search per profile, run twice: the first loads lazy parts (the query embedder) and is
        forgotten by the cost model, the second seeds it, so early budgeted requests are not cut for a cold run."""
        if entry.opened is None:
            return
        for name, casc in entry.opened.profiles.items():
            try:
                await casc.search(Query(text=WARMUP_QUERY, size=1))
                casc.reset_costs()
                res = await casc.search(Query(text=WARMUP_QUERY, size=1))
            except Exception as exc:
                log.exception("index %s: warm-up search of profile %s failed", entry.name, name)
                entry.fail(f"warm-up search of profile {name} failed: {type(exc).__name__}: {exc}")
                return
            if res.degraded:
                log.warning("index %s profile %s: warm-up search degraded (%s)", entry.name, name,
                            ", ".join(res.degraded))
        entry.status = "ready"

    async def _close(self, entry: IndexEntry) -> None:
        if entry.opened is not None:
            await entry.opened.close()

    def retire(self, entry: IndexEntry) -> None:
        """A replaced entry closes when its last running search is done (now, if none is)."""
        entry.retired = True
        if entry.active == 0:
            task = asyncio.create_task(self._close(entry))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def release(self, entry: IndexEntry) -> None:
        """A search on ``entry`` finished."""
        entry.active -= 1
        if entry.retired and entry.active == 0:
            task = asyncio.create_task(self._close(entry))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _open_all(self, configs: dict[str, Any]) -> None:
        async with self.reload_lock:
            for name, (cfg, path) in configs.items():
                entry = await self._open(name, cfg, path, strict=False)
                self.registry.entries[name] = entry  # one index at a time: the others serve meanwhile
                self._publish(entry)
                if entry.status == "ready":
                    log.info("index %s v%s ready in %.1f s", name, cfg.version, entry.opened_s)
                else:
                    log.error("index %s unavailable: %s", name, entry.detail or entry.error)
        if hasattr(self.cache, "ping") and self.cache.backend != "memory":
            if not await self.cache.ping():
                log.warning("redis is not answering; searches run uncached until it does")

    def _publish(self, entry: IndexEntry) -> None:
        self.metrics.index_ready.labels(entry.name, entry.version).set(1 if entry.status == "ready" else 0)

    async def reload(self) -> Registry:
        """Re-read configs and models; swap only if every index opens (else ApiError 422, old cascades stay)."""
        async with self.reload_lock:
            try:
                configs = await asyncio.to_thread(self.source.read)
            except ConfigError as exc:
                self.metrics.reloads.labels("rejected").inc()
                raise from_config_error(exc) from None
            new: dict[str, IndexEntry] = {}
            for name, (cfg, path) in configs.items():
                try:
                    entry = await self._open(name, cfg, path, strict=True)
                except ConfigError as exc:
                    self.metrics.reloads.labels("rejected").inc()
                    for e in new.values():
                        await self._close(e)
                    raise from_config_error(exc) from None
                old = self.registry.entries.get(name)
                if entry.status != "ready" and old is not None and old.status == "ready":
                    self.metrics.reloads.labels("rejected").inc()
                    for e in (*new.values(), entry):
                        await self._close(e)
                    raise ApiError(422, None, f"index {name}: {entry.detail}; the running cascades keep serving",
                                   "reload_rejected", file=str(path))
                new[name] = entry
            old = self.registry
            self.registry = Registry(new, self.registry.generation + 1)  # the swap: one assignment
            for e in old.entries.values():
                self.retire(e)
            self.metrics.index_ready.clear()  # indexes (and versions) that went away stop being reported
            for e in new.values():
                self._publish(e)
            self.metrics.reloads.labels("ok").inc()
            log.info("reloaded generation %d: %s", self.registry.generation,
                     ", ".join(f"{e.name} v{e.version} {e.status}" for e in new.values()))
            return self.registry

    # ------------------------------------------------------------------ lookups

    def entry(self, name: str) -> IndexEntry:
        """The serving entry of an index, or ApiError: 404 naming it, 503 with the reason it cannot serve."""
        entry = self.registry.entries.get(name)
        if entry is None:
            have = ", ".join(self.registry.names()) or "none"
            raise ApiError(404, "index", f"unknown index {name!r}; this service has: {have}", "unknown_index")
        if entry.status == "loading":
            raise ApiError(503, "index", f"index {name!r} is still loading", "loading", headers={"Retry-After": "2"})
        if entry.status != "ready" or entry.opened is None:
            raise ApiError(503, "index", f"index {name!r} is unavailable: {entry.error}", "unavailable")
        return entry

