"""Prometheus metrics of the service, one registry per app so that tests (and two apps in one process) never share counters.

The per-step series come from the same traces ``explain`` shows, so a
dashboard and an explained response never disagree about what a step cost.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import disable_created_metrics

from cascade.controller import SearchResult

disable_created_metrics()  # *_created series double the output and no dashboard reads them

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COUNT_BUCKETS = (0, 1, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("cascade_search_requests", "Search requests by index, profile and outcome.",
                                ["index", "profile", "status", "cache"], registry=r)
        self.request_seconds = Histogram("cascade_search_seconds", "Search request latency in the service.",
                                         ["index", "cache"], buckets=LATENCY_BUCKETS, registry=r)
        self.step_seconds = Histogram("cascade_step_seconds", "Latency of each cascade step (uncached searches).",
                                      ["index", "profile", "step", "kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.step_candidates = Histogram("cascade_step_candidates", "Candidates each step passed on.",
                                         ["index", "profile", "step", "kind"], buckets=COUNT_BUCKETS, registry=r)
        self.stage_cost = Counter("cascade_stage_cost", "Work done by stages, in each stage's own cost unit "
                                  "(pairs for a cross-encoder, rows for LTR, calls or tokens for an LLM).",
                                  ["index", "profile", "stage", "unit"], registry=r)
        self.cache_lookups = Counter("cascade_cache_lookups", "Result cache lookups by result.",
                                     ["index", "result"], registry=r)
        self.cache_errors = Counter("cascade_cache_errors", "Cache operations that failed or were skipped while "
                                    "the cache was marked down (searches went on uncached).",
                                    ["backend", "op"], registry=r)
        self.pair_cache = Counter("cascade_pair_score_cache", "Cross-encoder pair scores found in / missing from "
                                  "the pair-score cache.", ["index", "result"], registry=r)
        self.singleflight_shared = Counter("cascade_singleflight_shared", "Uncached requests answered by an identical "
                                           "request's computation.", ["index"], registry=r)
        self.degraded = Counter("cascade_degraded_responses", "Responses built without a failed step.",
                                ["index", "profile", "step"], registry=r)
        self.budget_cuts = Counter("cascade_budget_cuts", "Stages shrunk or skipped to fit a search's latency budget.",
                                   ["index", "profile", "step", "action"], registry=r)
        self.rejected = Counter("cascade_overload_rejections", "Searches turned away because too many were waiting.",
                                ["index"], registry=r)
        self.index_ready = Gauge("cascade_index_ready", "1 when the index's cascade is serving.", ["index", "version"],
                                 registry=r)
        self.in_flight = Gauge("cascade_searches_in_flight", "Uncached searches computing now.", registry=r)
        self.reloads = Counter("cascade_reloads", "Admin reloads by outcome.", ["outcome"], registry=r)
        self.assignments = Counter("cascade_experiment_assignments", "Searches assigned to an experiment, by arm "
                                   "(interleaved: every arm).", ["index", "experiment", "arm"], registry=r)
        self.events = Counter("cascade_events", "Posted events by outcome (accepted: stored before the 2xx; "
                              "rejected: invalid; backlog_full / unavailable: answered 503).", ["outcome"], registry=r)
        self.events_errors = Counter("cascade_events_store_errors", "Failed writes to the event stream "
                                     "(query_log: a search logged nothing, it still answered).", ["op"], registry=r)
        self.consumer = Gauge("cascade_events_consumed", "Records the in-process consumer has applied, by kind "
                              "(orphans: events whose search is unknown).", ["kind"], registry=r)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: a labels() lookup costs more than the increment on a cache hit."""
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def observe_result(self, index: str, result: SearchResult) -> None:
        p = result.profile
        for t in result.traces:
            self.step_seconds.labels(index, p, t.name, t.kind).observe(t.ms / 1e3)
            self.step_candidates.labels(index, p, t.name, t.kind).observe(t.n_out)
            for unit, n in t.costs().items():  # whatever the stage's type: it declares its unit (and meters tokens)
                self.stage_cost.labels(index, p, t.name, unit).inc(n)
            if t.error:
                self.degraded.labels(index, p, t.name).inc()
            if t.budget_cut:
                self.budget_cuts.labels(index, p, t.name, t.budget_cut).inc()

    def observe_consumer(self, stats: Any) -> None:
        """After each consumer batch: its running totals."""
        for kind in ("queries", "events", "orphans", "duplicates", "unattributed", "malformed", "replayed", "errors"):
            self.consumer.labels(kind).set(getattr(stats, kind))

    def render(self) -> bytes:
        return generate_latest(self.registry)
