"""Experiments in the service: arms assigned on the search path, events taken in, reports served.

The search path asks :meth:`Experiments.assign` which arm (or, when
interleaving, which arms) ranks a request, runs them through the ordinary
search path (so each arm's ranking is cached under its own profile's key, the
same entry a direct search of that profile uses, and is never mixed with
another arm's), and for interleaving draws the mixed list per request from
those rankings, seeded by (experiment, user, query). Every answer carries a
``query_id``; a search in an experiment (or every search, with
``CASCADE_EVENTS_LOG_QUERIES=all``) is logged with what it showed before the
answer leaves, so its events can be credited to the right arm.

``POST /v1/events`` validates each event on its own (a bad one is a 422 that
names its field; the valid ones of the batch are stored and reported) and
answers 2xx only once Redis holds them. ``GET /v1/experiments/{id}`` is the
live report.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cascade.experiments import assignment as assigning
from cascade.experiments.assignment import Assignment
from cascade.experiments.config import ExperimentConfig, Randomization
from cascade.experiments.interleaving import team_draft
from cascade.service.errors import ApiError, admin_refusal
from cascade.service.schemas import (
    ErrorResponse, EventsAccepted, EventsRejected, ExperimentList, ExperimentSummary, SearchRequest,
)
from cascade.service.search import dumps, run_search
from cascade.text import normalize_query

if TYPE_CHECKING:
    from cascade.service.registry import IndexEntry
    from cascade.service.state import ServiceState

log = logging.getLogger(__name__)

OFF = ("events are off: they are stored in Redis Streams, so the service needs CASCADE_REDIS_URL "
       "(and CASCADE_EVENTS_ENABLED not false)")


class Experiments:
    """The service's experiment machinery: the event log (Redis), the in-process consumer, assignment."""

    def __init__(self, state: "ServiceState"):
        self.state = state
        self.log: Any = None  # connectors.events.EventLog when Redis is configured
        self.consumer: Any = None
        self._task: asyncio.Task | None = None

    @property
    def settings(self) -> Any:
        return self.state.settings

    async def start(self) -> None:
        s = self.settings
        if not (s.redis_url and s.events_enabled):
            return
        from connectors.events import Consumer, EventLog

        m = self.state.metrics
        self.log = EventLog(s.redis_url, timeout_s=max(1.0, s.redis_timeout_s), query_timeout_s=s.redis_timeout_s,
                            retention=s.events_retention, max_backlog=s.events_max_backlog,
                            on_error=lambda op, exc: m.events_errors.labels(op).inc(), on_write=self._consume)
        if s.events_consumer:
            self.consumer = Consumer(s.redis_url, query_ttl_s=s.events_query_ttl_s,
                                     snapshot_every=s.events_snapshot_every, on_batch=m.observe_consumer)
            if any(e.experiments for e in self.state.source_configs()):
                self._consume()

    def _consume(self) -> None:
        """Start the in-process consumer (once): at start-up when an index declares experiments, else when the
        first record is written (a service nobody sends events to keeps no reader on Redis)."""
        if self.consumer is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.consumer.run())

    async def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.consumer is not None:
            await self.consumer.close()
        if self.log is not None:
            await self.log.close()

    # ------------------------------------------------------------------ the search path

    def assign(self, entry: "IndexEntry", req: SearchRequest, request_id: str, api_key: str | None) -> Assignment | None:
        """The request's experiment and arm(s), or None (its profile, or the default). An admin may force an
        arm (``experiment`` + ``arm`` with X-API-Key), which is served and never counted."""
        unit, kind = assigning.unit_of(req.user_id, req.session_id, request_id)
        exps = entry.config.experiments
        if req.experiment is not None or req.arm is not None:
            return self._forced(entry, req, api_key, unit, kind)
        if req.profile is not None or not exps:
            return None
        got = assigning.assign(entry.name, exps, unit=unit, unit_kind=kind, query_text=normalize_query(req.query))
        if got is not None:
            self.state.metrics.child(self.state.metrics.assignments, entry.name, got.experiment,
                                     got.arm or "interleaved").inc()
        return got

    def _forced(self, entry: "IndexEntry", req: SearchRequest, api_key: str | None, unit: str,
                kind: assigning.UnitKind) -> Assignment:
        if req.experiment is None or req.arm is None:
            missing = "experiment" if req.experiment is None else "arm"
            raise ApiError(422, missing, "forcing an arm takes both `experiment` and `arm`", "missing")
        secret = self.settings.admin_api_key.get_secret_value() if self.settings.admin_api_key else ""
        refusal = admin_refusal(secret, api_key)
        if refusal is not None:
            refusal.field = "arm"
            refusal.message = f"forcing an arm is for QA and needs the admin key: {refusal.message}"
            raise refusal
        if req.profile is not None:
            raise ApiError(422, "profile", "give either `profile` or a forced `arm`, not both", "conflict")
        exp = entry.config.experiments.get(req.experiment)
        if exp is None:
            have = ", ".join(entry.config.experiments) or "none"
            raise ApiError(422, "experiment", f"index {entry.name} has no experiment {req.experiment!r} "
                                              f"(experiments: {have})", "unknown_experiment")
        if req.arm not in exp.arms:
            raise ApiError(422, "arm", f"experiment {req.experiment} has no arm {req.arm!r} (arms: "
                                       f"{', '.join(exp.arms)})", "unknown_arm")
        return assigning.forced(req.experiment, exp, req.arm, unit=unit, unit_kind=kind)

    def logs(self, assigned: Assignment | None) -> bool:
        return self.log is not None and (assigned is not None or self.settings.events_log_queries == "all")

    async def search(self, entry: "IndexEntry", req: SearchRequest, request_id: str,
                     assigned: Assignment | None) -> tuple[bytes, str, dict[str, Any] | None, dict[str, Any]]:
        """(stable body, cache, budget report, extra response fields) of a search, with its experiment."""
        query_id = uuid.uuid4().hex
        extra: dict[str, Any] = {"query_id": query_id}
        randomized: dict[str, Any] | None = None
        if assigned is not None:
            extra["experiment"] = assigned.as_json()
        if assigned is not None and assigned.arm is None:
            stable, cache, budget, shown, teams, degraded = await self._interleaved(entry, req, request_id, assigned)
            profile = "+".join(assigned.arms)
        else:
            if assigned is not None:
                req = req.model_copy(update={"profile": assigned.arm})
            stable, cache, budget = await run_search(self.state, entry, req, request_id)
            shown, teams, degraded, profile = None, None, False, req.profile or entry.config.default_profile
            rnd = entry.config.experiments[assigned.experiment].randomize if assigned is not None else None
            if rnd is not None and not assigned.forced and req.from_ == 0 and (rnd.arms is None
                                                                             or assigned.arm in rnd.arms):
                stable, randomized = randpair(stable, rnd, query_id)
        if self.logs(assigned):
            if shown is None:
                body = json.loads(stable)
                shown, degraded = [h["id"] for h in body.get("hits", [])], bool(body.get("degraded"))
            await self.log.log_query(self._record(entry, req, request_id, query_id, assigned, profile, shown, teams,
                                                  degraded, randomized))
        return stable, cache, budget, extra

    async def _interleaved(self, entry: "IndexEntry", req: SearchRequest, request_id: str, a: Assignment
                           ) -> tuple[bytes, str, dict[str, Any] | None, list[str], list[int], bool]:
        k = req.from_ + req.size
        subs = [req.model_copy(update={"profile": arm, "size": k, "from_": 0}) for arm in a.arms]
        results = await asyncio.gather(*(run_search(self.state, entry, r, request_id) for r in subs))
        bodies = [json.loads(stable) for stable, _, _ in results]
        rankings = [[h["id"] for h in b["hits"]] for b in bodies]
        ids, teams = team_draft(rankings, k, a.seed)
        hits_by = [{h["id"]: h for h in b["hits"]} for b in bodies]
        n = max(len(ids), 1)
        hits = []
        for pos in range(req.from_, len(ids)):
            hit = dict(hits_by[teams[pos]][ids[pos]])
            hit["score"] = round((n - pos) / n, 6)  # display order (each arm's own scores do not compare)
            hit["arm"] = a.arms[teams[pos]]
            hits.append(hit)
        degraded = sorted({f"{arm}:{d}" for arm, b in zip(a.arms, bodies) for d in b.get("degraded", [])})
        payload: dict[str, Any] = {
            "index": entry.name, "profile": "+".join(a.arms), "config_version": entry.version, "hits": hits,
            "total": min(b.get("total", 0) for b in bodies), "degraded": degraded,
        }
        if req.explain:
            payload["arm_traces"] = {arm: b.get("trace") or [] for arm, b in zip(a.arms, bodies)}
        budgets = [b for _, _, b in results if b is not None]
        budget = None
        if budgets:
            budget = {**budgets[0], "skipped": sorted({s for b in budgets for s in b["skipped"]}),
                      "shrunk": {k2: v for b in budgets for k2, v in b["shrunk"].items()}}
        cache = "hit" if all(c == "hit" for _, c, _ in results) else "miss"
        return dumps(payload), cache, budget, ids[req.from_:], teams[req.from_:], bool(degraded)

    def _record(self, entry: "IndexEntry", req: SearchRequest, request_id: str, query_id: str,
                a: Assignment | None, profile: str, shown: list[str], teams: list[int] | None,
                degraded: bool, randomized: dict[str, Any] | None = None) -> dict[str, Any]:
        """The search as logged (UBI ubi_queries fields, plus what experiments need to credit events)."""
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        rec: dict[str, Any] = {
            "query_id": query_id, "index": entry.name, "timestamp": now, "user_query": normalize_query(req.query),
            "client_id": req.user_id or req.session_id, "user_id": req.user_id, "session_id": req.session_id,
            "request_id": request_id, "profile": profile, "hits": shown, "offset": req.from_,
            "degraded": degraded, "application": "cascade",
        }
        if a is not None:
            rec["experiment"] = {"id": a.experiment, "mode": a.mode, "arms": list(a.arms), "arm": a.arm,
                                 "fp": a.fingerprint, "forced": a.forced, "unit": a.unit_kind}
            if teams is not None:
                rec["teams"] = teams
        if randomized is not None:
            rec["randomized"] = randomized
        if req.user_attributes:
            rec["user_attributes"] = dict(req.user_attributes)
        return rec

    # ------------------------------------------------------------------ lookups

    def find(self, eid: str) -> tuple["IndexEntry", ExperimentConfig]:
        for entry in self.state.registry.entries.values():
            exp = entry.config.experiments.get(eid)
            if exp is not None:
                return entry, exp
        have = sorted(e for entry in self.state.registry.entries.values() for e in entry.config.experiments)
        raise ApiError(404, "experiment", f"no experiment {eid!r}; this service has: {', '.join(have) or 'none'}",
                       "unknown_experiment")


def randpair(stable: bytes, rnd: Randomization, query_id: str) -> tuple[bytes, dict[str, Any]]:
    """RandPair on a first page: maybe swap one adjacent pair (draws from the query id, so independent per
    impression); returns the body served and what the query log records (``swap`` null: left as ranked,
    the control that estimation compares against). Hits keep their own scores: display them in list order."""
    info: dict[str, Any] = {"method": rnd.method, "share": rnd.share, "swap": None}
    u = assigning.unit_hash("randpair", query_id)
    if u >= rnd.share:
        return stable, info
    body = json.loads(stable)
    hits = body.get("hits") or []
    k = rnd.swap(u, assigning.unit_hash("randpair-pair", query_id), len(hits))
    if k is None:
        return stable, info
    info["swap"] = [k, k + 1]
    hits[k - 1], hits[k] = hits[k], hits[k - 1]
    return dumps(body), info


def experiments_router(state: "ServiceState") -> APIRouter:
    """``POST /v1/events``, ``GET /v1/experiments`` and ``GET /v1/experiments/{id}``."""
    router = APIRouter(tags=["experiments"])
    errors = {c: {"model": ErrorResponse} for c in (404, 413, 503)}

    body_schema = {"oneOf": [{"$ref": "#/components/schemas/EventBatch"},
                             {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "minItems": 1}]}

    @router.post("/v1/events", status_code=202, response_model=EventsAccepted,
                 responses={422: {"model": EventsRejected, "description": "Some events were invalid: the valid "
                                  "ones are stored (accepted), each invalid one is listed with its field"}, **errors},
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": body_schema}}}},
                 summary="Store user events (UBI ubi_events fields) durably, for experiments and training")
    async def post_events(request: Request) -> JSONResponse:
        from cascade.experiments.events import BatchError, parse_batch, record
        from cascade.service.errors import request_id_of
        from connectors.events import BacklogFull, EventsUnavailable

        rid = request_id_of(request)
        raw = await request.body()
        m = state.metrics

        def unreadable(err: ApiError) -> JSONResponse:  # the whole batch: nothing stored (same 422 shape)
            m.events.labels("rejected").inc()
            return JSONResponse({**err.body(rid), "accepted": 0, "event_ids": [], "rejected": []}, status_code=422)

        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            return unreadable(ApiError(422, "body", f"malformed JSON: {exc}", "json_invalid"))
        try:
            good, bad = parse_batch(body, state.settings.events_max_batch)
        except BatchError as exc:
            if exc.limit:
                raise ApiError(413, exc.field, exc.message, "too_large", limit=exc.limit) from None
            return unreadable(ApiError(422, exc.field, exc.message, "invalid"))
        ex = state.experiments
        if ex.log is None:
            raise ApiError(503, None, OFF, "events_off")
        received = dt.datetime.now(dt.timezone.utc)
        records = [record(ev, received) for _, ev in good]
        ids: list[str] = []
        if records:
            try:
                await ex.log.append_events(records)
            except BacklogFull as exc:
                m.events.labels("backlog_full").inc(len(records) + len(bad))
                raise ApiError(503, None, f"{exc}: retry later (the consumer is behind; nothing of this batch "
                                          f"was stored)", "backlog_full", headers={"Retry-After": "5"}) from None
            except EventsUnavailable:
                m.events.labels("unavailable").inc(len(records))
                raise ApiError(503, None, "the event store (Redis) did not answer; nothing of this batch is "
                                          "acknowledged: retry it (events are counted once)", "events_unavailable",
                               headers={"Retry-After": "1"}) from None
            ids = [r["event_id"] for r in records]
            m.events.labels("accepted").inc(len(records))
        if bad:
            m.events.labels("rejected").inc(len(bad))
            first = bad[0]
            err = ApiError(422, first["field"], first["message"], first["type"])
            return JSONResponse({**err.body(rid), "accepted": len(records), "event_ids": ids, "rejected": bad},
                                status_code=422)
        return JSONResponse({"accepted": len(records), "event_ids": ids}, status_code=202)

    @router.get("/v1/experiments", response_model=ExperimentList, summary="Every experiment of every index")
    async def list_experiments() -> ExperimentList:
        out = []
        for entry in state.registry.entries.values():
            for eid, exp in entry.config.experiments.items():
                out.append(ExperimentSummary(id=eid, index=entry.name, mode=exp.mode, arms=exp.arms,
                                             status=exp.status(), traffic=exp.traffic, sample_size=exp.sample_size,
                                             description=exp.description))
        return ExperimentList(experiments=sorted(out, key=lambda e: (e.index, e.id)))

    @router.get("/v1/experiments/{experiment}", responses=errors,
                summary="The live report: per-arm metrics, tests (always-valid and fixed), SRM check, verdict")
    async def experiment_report(experiment: str) -> JSONResponse:
        entry, exp = state.experiments.find(experiment)
        ex = state.experiments
        if ex.log is None:
            raise ApiError(503, None, "experiments are measured from events: " + OFF, "events_off")
        rep = await load_report(ex.log.client, entry.name, experiment, exp)
        return JSONResponse(rep.as_json())

    return router


async def load_report(client: Any, index: str, eid: str, exp: ExperimentConfig) -> Any:
    """The report of one experiment from Redis (the service and the CLI both read it this way)."""
    from cascade.experiments.analysis import report
    from connectors.events import read_aggregates, read_orphans, read_series

    fp = exp.fingerprint()
    t0 = time.perf_counter()
    counts, series, orphans = await asyncio.gather(read_aggregates(client, index, eid, fp),
                                                   read_series(client, index, eid, fp), read_orphans(client))
    rep = await asyncio.to_thread(report, exp, eid, index, counts, series, orphans)
    log.debug("report %s built in %.1f ms", eid, (time.perf_counter() - t0) * 1e3)
    return rep
