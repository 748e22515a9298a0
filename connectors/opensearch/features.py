"""Keyword features from the cluster's own scoring: one ``_msearch`` per query, no plugin.

The embedded backend computes ``kw.FIELD.*`` from its forward index. A stock
OpenSearch cluster has no such index to read, but it scores: for each text
field of the feature set, one ``_msearch`` carries

* the field's BM25 of the query for the candidates (``match`` restricted to
  their ids by an ``ids`` filter, ``size`` = candidates, ``_source: false``):
  ``kw.F.bm25`` is the cluster's own ``_score``;
* one named clause per query word and a named ``match_phrase`` of the whole
  query, over the same ids: ``matched_queries`` of each hit give
  ``kw.F.coverage`` (share of the words present) and ``kw.F.phrase``;
* for ``kw.F.idf_coverage``, each word's document frequency (a ``size: 0``
  count) and the number of documents, cached for ``backend.stats_ttl_s``.

``kw.F.log_length`` is the candidate's analyzed length from its stored field
(cascade's analyzer: the cluster does not expose its norms). A candidate a
feature query does not return gets the value a non-matching document has
(0 for every feature but its length). A sub-search the cluster rejects, or a
round trip that fails, gives its field those missing values and is reported
(the features step's ``keyword_features`` trace entry carries the error), so
the LTR stage still runs and the search is never failed by it.

Words are the query's tokens that cascade's analyzer keeps (stop words
dropped, one word per analyzed term), each sent as written so that the
cluster analyzes it with the field's own analyzer.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cascade.text import error_text, public_reason
from connectors.analysis import analyze
from connectors.cache import LRU
from connectors.opensearch.queries import msearch_lines
from features.extractor import FieldsFeatureSource
from connectors.opensearch.responses import error_reason

if TYPE_CHECKING:
    from cascade.candidates import Candidates
    from cascade.query import Query
    from features.context import FeatureContext

_WORD = re.compile(r"\w+", re.UNICODE)
PHRASE = "phrase"


def query_words(text: str, kind: str) -> list[str]:
    """The query's words, one per distinct analyzed term, stop words dropped (as the embedded coverage counts)."""
    seen: dict[str, str] = {}
    for w in _WORD.findall(text):
        terms = analyze(kind, w)
        if terms and terms[0] not in seen:
            seen[terms[0]] = w
    return list(seen.values())


def scoring_body(target: str, text: str, ids: list[str]) -> dict[str, Any]:
    """The field's BM25 of the query, for the candidates only."""
    return {"query": {"bool": {"must": [{"match": {target: {"query": text}}}], "filter": [{"ids": {"values": ids}}]}},
            "size": len(ids), "_source": False, "track_total_hits": False}


def matching_body(target: str, text: str, words: list[str], ids: list[str]) -> dict[str, Any]:
    """Which words (``t0``, ``t1``...) and whether the phrase match, per candidate, as ``matched_queries``."""
    should: list[dict[str, Any]] = [{"match": {target: {"query": w, "_name": f"t{i}"}}} for i, w in enumerate(words)]
    should.append({"match_phrase": {target: {"query": text, "_name": PHRASE}}})
    return {"query": {"bool": {"should": should, "minimum_should_match": 1, "filter": [{"ids": {"values": ids}}]}},
            "size": len(ids), "_source": False, "track_total_hits": False}


def count_body(target: str | None, word: str | None) -> dict[str, Any]:
    """Documents containing ``word`` in ``target`` (or every document): a size-0 search counting exactly."""
    q = {"match_all": {}} if target is None else {"match": {target: {"query": word}}}
    return {"query": q, "size": 0, "track_total_hits": True}


def _total(item: dict[str, Any]) -> int:
    total = (item.get("hits") or {}).get("total")
    return int(total.get("value", 0) if isinstance(total, dict) else total or 0)


def _matched(hit: dict[str, Any]) -> set[str]:
    """``matched_queries`` as a set of names: a list, or a name -> score object (include_named_queries_score)."""
    m = hit.get("matched_queries") or ()
    return set(m.keys() if isinstance(m, dict) else m)


@dataclass
class KeywordAnswers:
    """What one round trip brought back, per field; ``errors`` names the fields whose queries failed."""

    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # field -> doc id -> _score
    matched: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # field -> doc id -> clause names
    words: dict[str, list[str]] = field(default_factory=dict)
    idf: dict[str, np.ndarray] = field(default_factory=dict)  # field -> idf of each word
    errors: dict[str, str] = field(default_factory=dict)  # field -> reason
    ms: float = 0.0


class OpenSearchKeywordQueries:
    """Builds and runs the feature ``_msearch`` of one query; keeps document frequencies for a while."""

    def __init__(self, backend: Any, fields: dict[str, str]):  # an OpenSearchBackend (not imported: it imports us)
        self.backend, self.fields = backend, fields  # field -> analyzer kind
        # Document frequencies by "field\x1fword" ("\x1f" alone: the number of documents), bounded and expiring.
        self._df = LRU(max_items=50_000)

    def _cached(self, key: tuple[str, str], now: float) -> int | None:
        return self._df.get(f"{key[0]}\x1f{key[1]}", now)

    def plan(self, text: str, ids: list[str], now: float) -> tuple[list[tuple[str, Any]], dict[str, list[str]]]:
        """The sub-searches, each tagged with what its answer is for, and the words per field."""
        b = self.backend.b
        tagged: list[tuple[str, Any]] = []
        words = {f: query_words(text, kind) for f, kind in self.fields.items()}
        if self._cached(("", ""), now) is None:
            tagged.append((("count", "", ""), count_body(None, None)))  # type: ignore[arg-type]
        for f in self.fields:
            target = b.field(f)
            tagged.append((("score", f, ""), scoring_body(target, text, ids)))  # type: ignore[arg-type]
            tagged.append((("match", f, ""), matching_body(target, text, words[f], ids)))  # type: ignore[arg-type]
            for w in words[f]:
                if self._cached((f, w.lower()), now) is None:
                    tagged.append((("count", f, w.lower()), count_body(target, w)))  # type: ignore[arg-type]
        return tagged, words

    async def run(self, query: "Query", candidates: "Candidates") -> KeywordAnswers:
        ids = list(candidates.ids)
        out = KeywordAnswers()
        if not ids or not self.fields:
            return out
        t0 = time.perf_counter()
        now = self.backend._clock()
        tagged, out.words = self.plan(query.text, ids, now)
        index = self.backend.index
        try:
            resp = await self.backend.cluster.call(
                f"the keyword-feature _msearch on {index!r}",
                lambda c: c.msearch(body=msearch_lines(index, [b for _, b in tagged])))
            items = resp.get("responses") or []
        except Exception as exc:  # the cluster is down or refused the request: every field gets missing values
            for f in self.fields:
                out.errors[f] = error_text(exc)
            items = []
        ttl = self.backend.b.stats_ttl_s
        fresh: dict[tuple[str, str], int] = {}  # counts in this answer (used even when nothing is cached)
        for (what, f, word), item in zip((t for t, _ in tagged), items):
            if "error" in item:  # a failed count leaves its document frequency missing (reported below)
                if what != "count":
                    out.errors.setdefault(f, f"OpenSearch rejected the {what} query of field {f!r} "
                                             f"({item.get('status')}): {public_reason(error_reason(item))}")
                continue
            if what == "count":
                fresh[(f, word)] = _total(item)
                if ttl > 0:
                    self._df.set(f"{f}\x1f{word}", fresh[(f, word)], ttl, now)
            elif what == "score":
                out.scores[f] = {str(h["_id"]): float(h.get("_score") or 0.0) for h in item["hits"]["hits"]}
            else:
                out.matched[f] = {str(h["_id"]): _matched(h) for h in item["hits"]["hits"]}
        known = lambda key: fresh[key] if key in fresh else self._cached(key, now)  # noqa: E731
        num_docs = known(("", ""))
        for f, ws in out.words.items():
            dfs = [known((f, w.lower())) for w in ws]
            if num_docs is None or any(d is None for d in dfs):
                if f not in out.errors and ws:
                    out.errors[f] = "document frequencies are missing from the answer"
                out.idf[f] = np.zeros(len(ws))
                continue
            df = np.asarray(dfs, dtype=np.float64)
            out.idf[f] = np.log1p((num_docs - df + 0.5) / (df + 0.5))
        out.ms = (time.perf_counter() - t0) * 1e3
        return out


def keyword_columns(answers: KeywordAnswers, field_name: str, kind: str, query: "Query",
                    candidates: "Candidates") -> np.ndarray:
    """The five ``kw.FIELD.*`` columns (bm25, coverage, idf_coverage, phrase, log_length) from the answers."""
    n = len(candidates)
    ids = candidates.ids
    scores = answers.scores.get(field_name, {})
    matched = answers.matched.get(field_name, {})
    words = answers.words.get(field_name, [])
    idf = answers.idf.get(field_name, np.zeros(len(words)))
    bm25 = np.array([scores.get(d, 0.0) for d in ids], dtype=np.float64)
    present = np.zeros((n, len(words)))
    phrase = np.zeros(n)
    for i, d in enumerate(ids):
        names = matched.get(d, ())
        for j in range(len(words)):
            present[i, j] = f"t{j}" in names
        phrase[i] = PHRASE in names
    cov = present.mean(axis=1) if words else np.zeros(n)
    idf_cov = (present @ idf) / idf.sum() if words and idf.sum() > 0 else np.zeros(n)
    lengths = np.array([len(analyze(kind, str((candidates.fields[i] or {}).get(field_name) or "")))
                        for i in range(n)], dtype=np.float64)
    return np.column_stack([bm25, cov, idf_cov, phrase, np.log1p(lengths)])


class OpenSearchFeatureSource(FieldsFeatureSource):
    """Features on the OpenSearch backend: keyword features from the feature ``_msearch``, the rest as
    :class:`features.extractor.FieldsFeatureSource` computes them (stored fields, kNN scores, the embedder)."""

    keyword_source = "opensearch"

    def __init__(self, backend: Any, keyword_fields: dict[str, str], embed_fields: list[str],
                 knn_names: list[str]):
        super().__init__(backend, embed_fields, knn_names)
        self.queries = OpenSearchKeywordQueries(backend, keyword_fields)

    async def prefetch(self, query: "Query", candidates: "Candidates") -> tuple[dict[str, Any], list[Any]]:
        """The feature round trip: (memo for the groups, [one trace part: name, ms, error])."""
        answers = await self.queries.run(query, candidates)
        error = "; ".join(f"{f}: {e}" for f, e in answers.errors.items()) or None
        return {"keyword": answers}, [("keyword_features", answers.ms, error)]

    def keyword_columns(self, ctx: "FeatureContext", field_name: str, kind: str) -> np.ndarray:
        answers = ctx.memo.get("keyword") or KeywordAnswers()
        return keyword_columns(answers, field_name, kind, ctx.query, ctx.candidates)
