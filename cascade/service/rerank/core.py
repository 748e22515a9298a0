"""What every rerank API shares: which profile a request's ``model`` names, the caller's documents as
candidates, one run of the profile's stages, truncation counted, scores a client can sort by.

The API modules (:mod:`.cohere`, :mod:`.tei`, :mod:`.vllm`) only translate their wire shapes into a
:class:`RerankCall` and a :class:`Ranked` back into their response; a TEI request and a Cohere request
for the same query and documents are the same computation and share one cache entry.

How a profile ranks documents it did not retrieve: there is no retrieval, fusion or feature step, so a
profile whose stages read index features (LTR) is refused for these routes. The first stage scores every
document sent (there is no retriever to have cut them); each later stage keeps its declared window
(``rerank``, and no more than the previous stage's ``keep``), the unscored rest following in the previous
order as in a search. ``keep`` cuts nothing: every document comes back with a finite score, because the
callers' contracts (TEI's array, OpenSearch's post-processor) index scores by position.

How it runs: :mod:`cascade.service.compute`, as a search does (admission, cache, single-flight, one error
path), with three differences. The rerank routes have their own admission pool (CASCADE_RERANK_MAX_CONCURRENT),
because one 1,000-document request holds a slot as long as hundreds of searches and would skew the searches'
wait estimate. The single-flight key is the request's content hash even when the cache is off, so a client
that retries after a 504 joins the ranking still running instead of starting another. And no latency budget
applies: an index's ``limits.budget_ms`` is a search's, and here it would skip or shrink the stage and hand
the caller back its own order; CASCADE_RERANK_TIMEOUT_S bounds the wait instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np

from cascade.candidates import Candidates
from cascade.controller import Cascade
from cascade.errors import ConfigError, QueryError
from cascade.query import Query
from cascade.service.compute import admitted, computed_once
from cascade.service.concurrency import Admission
from cascade.service.errors import ApiError
from cascade.service.rerank.truncation import cut_to_tokens, keep_ends, measure

if TYPE_CHECKING:
    from cascade.config import IndexConfig
    from cascade.service.registry import IndexEntry
    from cascade.service.state import ServiceState
    from cascade.settings import Settings

IMAGE_KEY = "image"  # the key of an image in a request's document object (Jina's multimodal shape)

ErrorKind = Literal["invalid", "empty", "unknown_model", "unsupported_model", "unauthorized", "too_large", "loading",
                    "unavailable", "overloaded", "timeout", "backend", "internal"]


class RerankError(Exception):
    """A request the core cannot answer; each API turns ``kind`` into its own status and body.

    ``kind``: invalid (bad input), empty (no query text or no documents), unknown_model, unsupported_model (a
    profile these routes cannot run), unauthorized, too_large, loading, unavailable, overloaded, timeout,
    backend (a model server failed; ``status`` is the search API's 502 or 503), internal (a bug).
    """

    def __init__(self, kind: ErrorKind, field: str | None, message: str, *, retry_after: str | None = None,
                 status: int | None = None):
        self.kind, self.field, self.message, self.retry_after, self.status = kind, field, message, retry_after, status
        super().__init__(message)

    @property
    def text(self) -> str:
        """The message with the field first, as the search API's errors name it."""
        return f"{self.field}: {self.message}" if self.field else self.message

    @classmethod
    def of(cls, exc: ApiError) -> "RerankError":
        """The search path's error (:mod:`cascade.service.compute`) as a rerank error: one error path for both."""
        kinds: dict[str, ErrorKind] = {"overloaded": "overloaded", "timeout": "timeout", "search_failed": "backend",
                                       "backend_error": "backend", "internal": "internal"}
        kind: ErrorKind = kinds.get(exc.type, "invalid" if 400 <= exc.status < 500 else "internal")
        return cls(kind, exc.field, exc.message, retry_after=(exc.headers or {}).get("Retry-After"),
                   status=exc.status)


@dataclass
class RerankCall:
    """One rerank request in API-neutral form.

    ``documents``: a string, or an object of fields (an ``image`` key holds an image URL or base64 data).
    ``where``: the request key that held the documents, for error messages (``documents``, ``texts``);
    ``positions``: each document's position in that key, when it is not its position here (vLLM's pairwise
    lists, ranked per query); ``query_key``: the key that held the query. ``truncate_left``: a document longer
    than the model reads is cut from its start, so the model reads its end (TEI's ``truncation_direction``).
    """

    model: str | None
    query: str
    documents: Sequence[Any]
    rank_fields: list[str] | None = None
    max_tokens_per_doc: int | None = None
    where: str = "documents"
    query_key: str = "query"
    positions: Sequence[int] | None = None
    truncate_left: bool = False

    def name_of(self, i: int) -> str:
        """The request path of document ``i`` (``documents.3``), as error messages name it."""
        return f"{self.where}.{self.positions[i] if self.positions is not None else i}"


@dataclass
class Ranked:
    """The answer: the order of the caller's documents and the profile's final score of each."""

    model: str  # INDEX:PROFILE
    order: list[int]  # document positions, best first (every document)
    scores: list[float]  # the profile's final score per document, in the caller's order
    truncated: int  # documents a model read only in part
    tokens: int  # tokens the models read (query + document, per scored pair)
    degraded: list[str] = field(default_factory=list)  # stages that failed (their order was kept)
    cache: str = "miss"
    took_ms: float = 0.0  # in the service, from resolving the model to the ranking (no HTTP, no JSON)

    @property
    def warnings(self) -> list[str]:
        out = []
        if self.truncated:
            out.append(f"{self.truncated} of {len(self.scores)} documents were longer than the model reads and "
                       f"were truncated")
        if self.degraded:
            out.append(f"stage(s) {', '.join(self.degraded)} failed; the documents keep the previous order "
                       f"(see the service log)")
        return out

    def stored(self) -> bytes:
        return json.dumps({"model": self.model, "order": self.order, "scores": self.scores,
                           "truncated": self.truncated, "tokens": self.tokens}, separators=(",", ":")).encode()

    @classmethod
    def from_stored(cls, raw: bytes) -> "Ranked":
        d = json.loads(raw)
        return cls(d["model"], d["order"], d["scores"], d["truncated"], d["tokens"], [], "hit")


# ---------------------------------------------------------------------------------------------- models


def stages_refusal(stages: Sequence[Any]) -> str | None:
    """Why a profile of these stages (built stages or stage configs) cannot rerank caller-given documents."""
    if not stages:
        return "has no stages (it ranks by retrieval and fusion only)"
    bad = [s for s in stages if getattr(s, "reads_features", False)]
    if bad:
        name = getattr(bad[0], "stage_name", None) or bad[0].name
        kind = getattr(bad[0], "kind", None) or getattr(bad[0], "type", "?")
        return (f"has stage {name!r} ({kind}), which reads features the index computes over its own candidates; "
                f"the rerank APIs take the caller's documents, so only profiles whose stages read text "
                f"(cross_encoder, llm) can serve them")
    return None


def refusal(casc: Cascade) -> str | None:
    """Why this profile cannot rerank caller-given documents, or None when it can."""
    return stages_refusal(casc.stages)


def config_refusal(cfg: IndexConfig, profile: str | None = None) -> str | None:
    """:func:`refusal` from a config alone (start-up checks, the shipped configs' test): no models loaded."""
    return stages_refusal(cfg.profile(profile).enabled_stages())


def check_models(settings: Settings, configs: Mapping[str, IndexConfig]) -> None:
    """Start-up check of CASCADE_RERANK_MODELS and CASCADE_RERANK_DEFAULT_MODEL against the configs read:
    every target must be an index of this service and a profile of it that can rerank (ConfigError naming the
    setting otherwise), so a typo fails start-up instead of every request that relies on it."""
    def check(setting: str, key: str, target: str) -> None:
        index, _, profile = target.partition(":")
        cfg = configs.get(index)
        if cfg is None:
            raise ConfigError(setting, key, f"{target!r} names no index of this service (indexes: "
                                            f"{', '.join(sorted(configs)) or 'none'}); write INDEX or INDEX:PROFILE")
        if profile and profile not in cfg.profile_names():
            raise ConfigError(setting, key, f"index {index} has no rank profile {profile!r} (profiles: "
                                            f"{', '.join(cfg.profile_names())})")
        why = config_refusal(cfg, profile or None)
        if why is not None:
            raise ConfigError(setting, key, f"profile {profile or cfg.default_profile} of index {index} {why}")

    for alias, target in settings.rerank_models.items():
        check("CASCADE_RERANK_MODELS", alias, target)
    if settings.rerank_default_model:
        name = settings.rerank_default_model
        check("CASCADE_RERANK_DEFAULT_MODEL", "", settings.rerank_models.get(name, name))


def rerank_names(state: ServiceState) -> list[str]:
    """Every name a request's ``model`` may take: aliases, INDEX (its default profile) and INDEX:PROFILE."""
    names = sorted(state.settings.rerank_models)
    for name in state.registry.names():
        entry = state.registry.entries[name]
        if entry.opened is None:
            continue
        default = entry.opened.default_profile
        for prof, casc in entry.opened.profiles.items():
            if refusal(casc) is None:
                if prof == default:
                    names.append(name)
                names.append(f"{name}:{prof}")
    return names


def _listing(state: ServiceState) -> str:
    names = rerank_names(state)
    return ", ".join(names) if names else "none (no index has a profile of text-reading stages)"


def default_model(state: ServiceState) -> str | None:
    """CASCADE_RERANK_DEFAULT_MODEL, or the one index whose default profile can rerank."""
    if state.settings.rerank_default_model:
        return state.settings.rerank_default_model
    indexes = [n for n in rerank_names(state) if ":" not in n and n not in state.settings.rerank_models]
    return indexes[0] if len(indexes) == 1 else None


def resolve(state: ServiceState, model: str | None) -> tuple[IndexEntry, Cascade]:
    """The entry and profile a request's ``model`` names (an alias, INDEX or INDEX:PROFILE)."""
    name = model if model else default_model(state)
    if not name:
        raise RerankError("invalid", "model", f"required: this service has no single default "
                                              f"(CASCADE_RERANK_DEFAULT_MODEL); it reranks with: {_listing(state)}")
    target = state.settings.rerank_models.get(name, name)
    index, _, profile = target.partition(":")
    entry = state.registry.entries.get(index)
    if entry is None:
        raise RerankError("unknown_model", "model", f"unknown model {name!r}; this service reranks with: "
                                                    f"{_listing(state)}")
    if entry.status == "loading":
        raise RerankError("loading", "model", f"index {index!r} is still loading", retry_after="2")
    if entry.status != "ready" or entry.opened is None:
        raise RerankError("unavailable", "model", f"index {index!r} is unavailable: {entry.error}")
    casc = entry.opened.profiles.get(profile or entry.opened.default_profile)
    if casc is None:
        raise RerankError("unknown_model", "model", f"index {index} has no rank profile {profile!r}; this service "
                                                    f"reranks with: {_listing(state)}")
    why = refusal(casc)
    if why is not None:
        raise RerankError("unsupported_model", "model", f"profile {casc.profile} of index {index} {why}; this "
                                                        f"service reranks with: {_listing(state)}")
    return entry, casc


# ---------------------------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class DocumentFields:
    """Where a profile's stages read a document: its text fields, the field a plain string fills, the image."""

    text: tuple[str, ...]
    main: str
    image: str | None

    @classmethod
    def of(cls, casc: Cascade) -> "DocumentFields":
        images = [getattr(s, "image_field", None) for s in casc.stages]
        image = next((f for f in images if f), None)
        text: list[str] = []
        for s in casc.stages:
            for f in s.text_fields:
                if f not in text and f not in images:
                    text.append(f)
        main = "text" if "text" in text or not text else text[0]
        return cls(tuple(text), main, image)


def _value(v: Any, where: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    raise RerankError("invalid", where, f"expected a string, got {type(v).__name__}")


def document_fields(doc: Any, i: int, call: RerankCall, df: DocumentFields) -> dict[str, str]:
    """The candidate fields of one request document (a string, or an object of fields).

    An object is read as Cohere's API reads it: with ``rank_fields``, those keys in that order (the profile's
    own fields kept apart, other keys joined into its main text field); without, the profile's fields that
    are present (``title``, ``text``), else ``text``, Cohere's default. Other keys (ids, URLs, metadata of any
    type) are not read, not checked and echoed back as sent; an object with none of the keys read ranks on
    no text, below every scored document. ``image`` is read for a multimodal profile and refused (400 naming
    it) by a text-only one, which would otherwise rank an image document on its text alone without a word.
    """
    where = call.name_of(i)
    if isinstance(doc, str):
        return {df.main: doc}
    if not isinstance(doc, dict):
        raise RerankError("invalid", where, f"expected a string or an object of fields, got {type(doc).__name__}")
    out: dict[str, str] = {}
    image_key = next((k for k in (IMAGE_KEY, df.image) if k and doc.get(k) is not None), None)
    if image_key is not None:
        if df.image is None:
            raise RerankError("invalid", f"{where}.{image_key}",
                              "this profile ranks text only; images need a cross_encoder stage with `image_field` "
                              "on a multimodal remote backend (backend: jina)")
        out[df.image] = _value(doc[image_key], f"{where}.{image_key}")
    if call.rank_fields:
        keys = [k for k in call.rank_fields if doc.get(k) is not None]
        if not all(k in df.text for k in keys):  # other keys (content, source, ...): joined, in order, as the text
            out[df.main] = " ".join(_value(doc[k], f"{where}.{k}") for k in keys)
            return out
    else:
        keys = [k for k in df.text if doc.get(k) is not None]
        if not keys and doc.get("text") is not None:  # Cohere's default field, for a profile that reads others
            out[df.main] = _value(doc["text"], f"{where}.text")
            return out
    out.update({k: _value(doc[k], f"{where}.{k}") for k in keys})
    return out


def build_candidates(call: RerankCall, df: DocumentFields) -> Candidates:
    """The caller's documents as candidates in their order (ids are positions; scores descend with position,
    which is the order kept should every stage fail)."""
    n = len(call.documents)
    fields: list[dict[str, Any] | None] = [document_fields(d, i, call, df) for i, d in enumerate(call.documents)]
    return Candidates(ids=[str(i) for i in range(n)], fields=fields, score=-np.arange(n, dtype=np.float64))


def ranking_view(casc: Cascade, n: int) -> Cascade:
    """The profile with the first stage scoring all ``n`` documents and no stage cutting any (see the module doc)."""
    overrides: dict[str, dict[str, int]] = {}
    prev_keep: int | None = None
    for i, s in enumerate(casc.stages):
        window = n if i == 0 else min(x for x in (s.rerank, prev_keep, n) if x)
        overrides[s.name] = {"rerank": max(window, 1), "keep": max(n, 1)}
        prev_keep = s.keep or prev_keep
    return casc.with_overrides(overrides, deeper=True)


# ---------------------------------------------------------------------------------------------- running


class Pool:
    """The rerank routes' admission pool (CASCADE_RERANK_MAX_CONCURRENT running, CASCADE_RERANK_MAX_QUEUED
    waiting), apart from the searches': see the module doc. A request whose expected wait exceeds
    CASCADE_RERANK_TIMEOUT_S is turned away at once. Built in the loop that serves (the guards bind to it)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._admission: Admission | None = None

    def admission(self) -> Admission:
        loop = asyncio.get_running_loop()
        if self._admission is None or self._loop is not loop:
            s = self.settings
            self._admission, self._loop = Admission(s.rerank_max_concurrent, s.rerank_max_queued), loop
        return self._admission


def cache_key(entry: IndexEntry, casc: Cascade, query: str, fields: list[Any], max_tokens: int | None) -> str:
    blob = json.dumps([entry.name, entry.version, casc.profile, entry.fingerprints.get(casc.profile), query,
                       max_tokens, fields], separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    digest = hashlib.blake2b(blob.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()
    return f"cascade:rerank:{entry.name}:{digest}"


async def _compute(state: ServiceState, pool: Pool, entry: IndexEntry, casc: Cascade, query: Query,
                   cands: Candidates, cut: np.ndarray, request_id: str) -> Ranked:
    n = len(cands)
    view = ranking_view(casc, n)
    texts_by_stage = {s.name: [cands.text(i, [f for f in s.text_fields if f != getattr(s, "image_field", None)])
                               for i in range(n)] for s in view.stages if s.text_fields}
    try:  # no budget_ms (see the module doc)
        res = await admitted(state, entry, lambda waited_s: view.rerank(query, cands),
                             deadline_s=state.settings.rerank_timeout_s, request_id=request_id,
                             admission=pool.admission(), what="rerank")
    except ApiError as exc:
        raise RerankError.of(exc) from None
    order, scores, scored = _in_caller_order(res.candidates, n)
    truncated, tokens = await asyncio.to_thread(measure, view.stages, query.text, texts_by_stage, scored)
    return Ranked(f"{entry.name}:{casc.profile}", order, [float(x) for x in scores], int((truncated | cut).sum()),
                  tokens, res.degraded)


def _in_caller_order(out: Candidates, n: int) -> tuple[list[int], np.ndarray, dict[str, np.ndarray]]:
    """(ranked positions, final score per document, which documents each stage scored), in the caller's order.

    Every score is finite: a document without one (none should lack it: keep cuts nothing) ranks last."""
    positions = np.array([int(i) for i in out.ids], dtype=np.int64)
    scores = np.full(n, np.nan)
    scores[positions] = out.score
    scored: dict[str, np.ndarray] = {}
    for name, col in out.stage_scores.items():
        mask = np.zeros(n, dtype=bool)
        mask[positions] = np.isfinite(col)
        scored[name] = mask
    order = positions.tolist()
    missing = [i for i in range(n) if not np.isfinite(scores[i])]
    if missing:
        floor = float(np.min(scores[np.isfinite(scores)])) if np.isfinite(scores).any() else 0.0
        scores[missing] = floor - 1.0 - np.arange(len(missing))
        gone = set(missing)
        order = [i for i in order if i not in gone] + missing
    return order, scores, scored


async def rerank(state: ServiceState, pool: Pool, call: RerankCall, request_id: str = "") -> Ranked:
    """Rank ``call``'s documents with the profile its ``model`` names: from the cache, or computed once."""
    t0 = time.perf_counter()
    entry, casc = resolve(state, call.model)
    if not isinstance(call.query, str) or not call.query.strip():
        raise RerankError("empty", call.query_key, "query text is empty")
    if not call.documents:
        raise RerankError("empty", call.where, "must hold at least one document")
    if call.rank_fields is not None and not call.rank_fields:
        raise RerankError("invalid", "rank_fields", "must name at least one field when given")
    df = DocumentFields.of(casc)
    cands = build_candidates(call, df)
    try:
        query = casc.validate(Query(text=call.query, size=1))
    except QueryError as exc:
        raise RerankError("invalid", call.query_key if exc.field == "text" else exc.field, exc.message) from None
    cut = np.zeros(len(cands), dtype=bool)
    if call.max_tokens_per_doc is not None:
        cut = cut_to_tokens(casc.stages, cands, df.main, call.max_tokens_per_doc)
    if call.truncate_left:  # the cut documents are in the cache key: their fields are what it hashes
        cut |= keep_ends(casc.stages, cands, df.main, query.text)
    cfg = entry.config.cache
    # The content hash keys the computation even with the cache off: a retry after a 504 joins the running one.
    key = cache_key(entry, casc, query.text, cands.fields, call.max_tokens_per_doc)
    timeout_s = state.settings.rerank_timeout_s
    try:
        got = await computed_once(
            state, entry, lambda: _compute(state, pool, entry, casc, query, cands, cut, request_id),
            key=key if cfg.enabled else None, ttl_s=cfg.ttl_s, flight_key=key, timeout_s=timeout_s,
            encode=lambda r: None if r.degraded else r.stored(),  # a degraded answer is not worth repeating
            late=f"no answer within {timeout_s:g} s (CASCADE_RERANK_TIMEOUT_S); the ranking goes on: the same "
                 f"request, sent again, waits for it instead of starting over")
    except ApiError as exc:
        raise RerankError.of(exc) from None
    took_ms = (time.perf_counter() - t0) * 1e3
    if got.cached is not None:
        r = Ranked.from_stored(got.cached)
        r.took_ms = took_ms
        return r
    r = got.computed
    assert r is not None
    return Ranked(r.model, list(r.order), list(r.scores), r.truncated, r.tokens, list(r.degraded), "miss", took_ms)


# ---------------------------------------------------------------------------------------------- scores


def number(x: float) -> float:
    """A finite float with at most 12 significant digits.

    OpenSearch's ML Commons parses a connector's answer with json-smart, which turns a decimal of more than
    18 characters into a BigDecimal that its rerank post-processor then fails to cast to Double; 12 digits
    keep every value short while separating any two scores a model can tell apart.
    """
    return float(f"{x:.12g}") if math.isfinite(x) else 0.0


def relevance(x: float) -> float:
    """The profile's score as a relevance in (0, 1): the logistic function, which keeps the order (Cohere,
    Jina, Voyage, TEI without raw_scores and vLLM all document scores in that range). Never 0 (the logistic
    underflows below -745): :func:`descending` must find room below it."""
    z = math.exp(-abs(x))
    return max(number(1.0 / (1.0 + z) if x >= 0 else z / (1.0 + z)), 1e-300)


def below(x: float) -> float:
    """The largest number of at most 12 significant digits below ``x``."""
    if x == 0:
        return -1e-300
    step = 10.0 ** (math.floor(math.log10(abs(x))) - 11)
    for k in (1, 2):  # a step that rounds back onto x (at a power of ten) takes two
        y = float(f"{x - k * step:.12g}")
        if y < x:
            return y
    return x - 2 * step


def descending(values: Sequence[float]) -> list[float]:
    """Scores in rank order made strictly decreasing: one that ties with (or passes) the score above it becomes
    the next 12-digit number below that one.

    Ties come from equal model scores and from the logistic, which rounds every logit above ~29 to 1.0 at 12
    digits; a client that sorts by score (OpenSearch's rerank processor, TEI clients) would then order tied
    documents its own way instead of cascade's. The nudge is at the 12th digit: no score moves visibly.
    """
    out: list[float] = []
    prev = math.inf
    for v in values:
        v = below(prev) if v >= prev else v
        out.append(v)
        prev = v
    return out
