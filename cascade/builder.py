"""The one way to open and run an index: the service, the CLI, evaluation, feature logs and benchmarks all come here.

``open_index`` opens the backend once, builds the retrievers once, and builds
every rank profile's cascade on top of them through one
:class:`~cascade.stages.base.BuildContext`, which composes each model's scorer
(runtime, micro-batcher, pair-score cache) at build time and shares it between
profiles that name the same model. Nothing is wrapped after the build, so what
``cascade eval`` ranks is what the service ranks; the only differences are
the ones asked for (a pair-score store, which profiles to build).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from cascade.config import IndexConfig
from cascade.controller import Cascade
from cascade.errors import ConfigError, ModelNotFound, UnknownProfile
from cascade.settings import Settings, get_settings
from cascade.stages.base import BuildContext

log = logging.getLogger(__name__)


@dataclass
class OpenedIndex:
    """An index opened once: its backend, retrievers and loaded models, and a cascade per rank profile."""

    config: IndexConfig
    backend: Any
    retrievers: dict[str, Any]
    profiles: dict[str, Cascade]
    context: BuildContext
    closed: bool = field(default=False, init=False)

    @property
    def default_profile(self) -> str:
        return self.config.default_profile if self.config.default_profile in self.profiles else next(iter(self.profiles))

    def cascade(self, profile: str | None = None) -> Cascade:
        """The cascade of ``profile`` (None: the index's default_profile); UnknownProfile lists the others."""
        name = profile or self.default_profile
        casc = self.profiles.get(name)
        if casc is None:
            raise UnknownProfile(self.config.index, name, sorted(self.profiles))
        return casc

    def stages(self) -> list[Any]:
        """Every distinct stage object across profiles."""
        seen: dict[int, Any] = {}
        for casc in self.profiles.values():
            for st in casc.stages:
                seen.setdefault(id(st), st)
        return list(seen.values())

    async def close(self) -> None:
        """Release what the index holds: stages, their scorers (HTTP clients, batcher threads), the backend."""
        if self.closed:
            return
        self.closed = True
        for st in self.stages():
            await _quietly(st.close(), f"stage {st.name}")
        for scorer in self.context.scorers():
            await _quietly(scorer.close(), f"scorer {getattr(scorer, 'name', scorer)}")
        close = getattr(self.backend, "close", None)
        if close is not None:
            await _quietly(close(), f"backend of {self.config.index}")


async def _quietly(aw: Any, what: str) -> None:
    try:
        if aw is not None:
            await aw
    except Exception:  # closing must go on for the others
        log.warning("closing %s failed", what, exc_info=True)


def profile_key(config: IndexConfig, name: str, declared_default_at_top: bool = True) -> str:
    """Key path of a profile's stage list in the user's file."""
    return "stages" if name == "default" and declared_default_at_top else f"profiles.{name}.stages"


def open_index(config: IndexConfig, settings: Settings | None = None, *, profiles: Iterable[str] | None = None,
               pair_store: Any = None, on_pair_lookup: Callable[[str, int, int], None] | None = None,
               file: str = "", stages: bool = True) -> OpenedIndex:
    """Open ``config``'s backend and build its profiles (all, or those named) on it. Blocking: models load here.

    ``pair_store``: where cross-encoder pair scores are cached, for indexes whose
    config asks for it (``cache.pair_scores``); None caches nothing.
    ``stages=False``: retrieval, fusion and features only, loading no stage model
    (feature logs, which train the LTR model a stage will load).
    """
    from connectors import open_backend

    settings = settings or get_settings()
    names = list(profiles) if profiles is not None else config.profile_names()
    for n in names:
        config.profile(n)  # UnknownProfile before anything is opened
    backend = open_backend(config, settings)
    try:
        retrievers = {name: backend.retriever(name, rcfg) for name, rcfg in config.retrievers.items()}
        ctx = BuildContext(settings=settings, index=config, file=file or f"{config.index}.yaml",
                           pair_store=pair_store if config.cache.pair_scores else None,
                           pair_ttl_s=config.cache.pair_scores_ttl_s, on_pair_lookup=on_pair_lookup)
        cascades = {n: _build_profile(config, n, backend, retrievers, ctx, stages) for n in names}
    except BaseException:
        close = getattr(backend, "close", None)
        if close is not None:
            _close_now(close)
        raise
    return OpenedIndex(config, backend, retrievers, cascades, ctx)


def _close_now(close: Callable[[], Any]) -> None:
    import asyncio
    import inspect

    try:
        res = close()
        if inspect.isawaitable(res):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                asyncio.run(res)
            else:  # called from a loop's thread (a test): schedule it
                asyncio.ensure_future(res)
    except Exception:
        log.warning("closing a half-opened backend failed", exc_info=True)


def _build_profile(config: IndexConfig, name: str, backend: Any, retrievers: dict[str, Any],
                   ctx: BuildContext, with_stages: bool = True) -> Cascade:
    prof = config.profile(name)
    pcfg = config.for_profile(name)
    features = None
    if prof.features is not None:
        from features.extractor import FeatureExtractor, feature_source_for

        features = FeatureExtractor(pcfg, feature_source_for(backend, pcfg), settings=ctx.settings)
    key = profile_key(config, name)
    stages = [_build_stage(s, ctx.at(f"{key}.{i}", features.names if features else None,
                                     features.keyword_source if features else None))
              for i, s in enumerate(prof.stages) if s.enabled and with_stages]
    return Cascade(pcfg, retrievers, stages, backend, features, profile=name)


def _build_stage(stage_cfg: Any, ctx: BuildContext) -> Any:
    """A stage whose model cannot be found is a config error at its ``model`` key (file, key, reason)."""
    try:
        return stage_cfg.build(ctx)
    except ModelNotFound as exc:
        raise ConfigError(ctx.file, f"{ctx.key}.model", str(exc)) from None


def open_cascade(config: IndexConfig, settings: Settings | None = None, profile: str | None = None,
                 stages: bool = True) -> Cascade:
    """One profile's cascade on a newly opened backend (scripts, tests); services keep the :class:`OpenedIndex`."""
    return open_index(config, settings, profiles=[profile or config.default_profile], stages=stages).cascade(profile)
