"""``cascade plan``: depths, replicas, GPUs and OpenSearch nodes for N documents at Q queries/s under a p95 target.

Inputs, each labelled in the output with where it comes from:

- measured on this machine by ``cascade tune`` (its JSON): per-query retrieval
  times on the tuned collection, the query embedding, fusion, features per
  candidate, LTR per row, the cross-encoder per pair and per call, the fused
  candidates per query, the share of queries whose cross-encoder exits early;
- measured on the user's collection by ``cascade tune``: recall@k of each
  retriever and nDCG@10 against cross-encoder depth;
- measured here by :mod:`cascade.planning.hnsw`: kNN search time against graph size;
- cited public figures (:mod:`cascade.planning.figures`): HNSW memory,
  BM25 latency growth per million documents, MiniLM-L6 throughput on a V100,
  OpenSearch heap, k-NN memory share and search threads.

For each cross-encoder depth the tune measured, the planner searches the
smallest fleet whose simulated p95 (:mod:`cascade.planning.simulate`, Poisson
arrivals) meets the target, adding a server where queries wait longest, and
recommends the cheapest fleet whose depth is within ``tolerance`` nDCG@10 of
the best feasible one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from cascade.planning import figures as F
from cascade.planning.hnsw import HnswFit
from cascade.planning.simulate import SimResult, Station, Visit, poisson_arrivals, simulate


@dataclass
class Measured:
    """What ``cascade tune`` measured on this machine and collection (its JSON's ``costs`` and ``curves``)."""

    source: str
    corpus_docs: int
    bm25_ms: list[float]  # per query, at corpus_docs documents (embedded tantivy here)
    embed_ms: float
    fusion_ms: float
    features: dict[str, float]  # fixed_ms, per candidate
    ltr: dict[str, float] | None  # fixed_ms, per row
    ce: dict[str, float] | None  # fixed_ms, per pair (this CPU)
    candidates: list[int]  # fused candidates per query
    depth_curve: list[dict]  # [{depth, ndcg@10}] of the cross-encoder (0: off)
    recall: dict[str, dict[str, float]]
    exit_share: float = 0.0  # queries whose cross-encoder exits early (the tuned gate)
    ce_stage: str | None = None
    curve_from: str = ""  # the collection and split the depth curve was measured on

    @classmethod
    def from_tune(cls, data: dict, source: str) -> "Measured":
        costs, curves = data["costs"], data["curves"]
        units = costs["units"]
        bm25 = next((r for r in costs["retriever_ms_samples"] if r.startswith("bm25")), None)
        if bm25 is None:
            raise ValueError(f"{source}: the tuned index has no bm25 retriever whose times the plan can scale")
        pair_stages = [k for k, v in units.items() if v.get("unit") == "pairs"]
        ce = pair_stages[0] if pair_stages else None
        row_stages = [k for k, v in units.items() if v.get("unit") == "rows"]

        def unit(name):
            if name is None:
                return None
            u = units[name]
            per = next(v for k, v in u.items() if k.startswith("ms_per_"))
            return {"fixed_ms": u["fixed_ms"], "per_unit_ms": per}

        exit_share = 0.0
        h = data.get("holdout") or {}
        if ce and ce in (h.get("early_exit") or {}) and h["early_exit"][ce].get("in_proposal", True):
            exit_share = h["early_exit"][ce]["exited_share"]
        else:
            for e in data.get("early_exit", []):
                if e["stage"] == ce and e.get("chosen"):
                    exit_share = e["out_of_fold"][e["chosen"]["signal"]]["exited_share"]
        # Quality against depth from the held-out split when there is one (a model flattered by the tuning split
        # reads truer there); else from the tuning split.
        held = (curves.get("depth_holdout") or {}).get(ce) if ce else None
        curve = held or ((curves.get("depth") or {}).get(ce, []) if ce else [])
        where = f"{data.get('dataset')} {curves['holdout_split']}" if held else \
            f"{data.get('dataset')} {data.get('split')}"
        return cls(source, int(costs.get("corpus_docs") or 0), list(costs["retriever_ms_samples"][bm25]),
                   float(costs.get("embed_ms") or 0.0), float(costs["fusion_ms"]), unit("features") or {},
                   unit(row_stages[0]) if row_stages else None, unit(ce), list(costs["fused_candidates"]),
                   curve, curves.get("recall", {}), exit_share, ce, where)


@dataclass
class Hardware:
    replicas: int  # cascade replica machines
    gpus: int  # GPU rerank servers (0: the cross-encoder runs on the replicas' CPUs)
    nodes: int  # OpenSearch data nodes
    shards: int  # primary shards

    def machines(self) -> int:
        return self.replicas + self.gpus + self.nodes


@dataclass
class Option:
    """One cross-encoder depth with the smallest fleet found for it."""

    depth: int
    ndcg: float
    hardware: Hardware | None
    sim: SimResult | None
    note: str = ""

    def as_json(self) -> dict:
        d: dict[str, Any] = {"cross_encoder_depth": self.depth, "ndcg@10_measured": round(self.ndcg, 4),
                             "feasible": self.hardware is not None, "note": self.note}
        if self.hardware is not None and self.sim is not None:
            hw = self.hardware
            d.update({"replicas": hw.replicas, "gpus": hw.gpus, "opensearch_nodes": hw.nodes, "shards": hw.shards,
                      "p50_ms": round(self.sim.p50, 1), "p95_ms": round(self.sim.p95, 1),
                      "utilization": {k: round(v, 3) for k, v in self.sim.utilization.items()},
                      "mean_wait_ms": {k: round(v, 2) for k, v in self.sim.wait_ms.items()}})
        return d


@dataclass
class Plan:
    docs: int
    qps: float
    p95_ms: float
    dims: int
    gpu: str
    options: list[Option]
    chosen: Option | None
    memory: dict[str, Any]
    assumptions: list[dict]
    inputs: Measured
    hnsw: HnswFit
    service_ms: dict[str, float] = field(default_factory=dict)  # the chosen option's mean service per station
    curve: list[dict] = field(default_factory=list)  # p95 against the bottleneck pool's size (chart)

    def as_json(self) -> dict:
        return {"docs": self.docs, "qps": self.qps, "p95_target_ms": self.p95_ms, "dims": self.dims, "gpu": self.gpu,
                "recommended": self.chosen.as_json() if self.chosen else None,
                "options": [o.as_json() for o in self.options], "memory": self.memory,
                "service_ms": {k: round(v, 3) for k, v in self.service_ms.items()},
                "hnsw": self.hnsw.as_json(), "assumptions": self.assumptions, "p95_curve": self.curve,
                "recall_at_k": self.inputs.recall, "measured_on": self.inputs.source}


@dataclass
class Params:
    docs: int
    qps: float
    p95_ms: float
    dims: int = 384
    m: int = 16
    vectors: str = "fp32"
    copies: int = 2  # primary + one replica of every shard
    shard_docs: int = 2_000_000
    node_ram_gib: float = 64.0
    node_cores: int = 8
    replica_cores: int = 8
    gpu: str = "v100"  # "none": the cross-encoder on the replicas' CPUs
    gpu_pairs_per_s: float | None = None
    gpu_call_ms: float = F.GPU_CALL_MS.value
    os_call_ms: float = F.OS_CALL_MS.value
    tolerance: float = 0.005
    queries: int = 4000
    seed: int = 13


def memory(p: Params) -> dict[str, Any]:
    per_vec = F.hnsw_bytes_per_vector(p.dims, p.m, p.vectors)
    total = per_vec * p.docs * p.copies
    budget = F.knn_budget_bytes(p.node_ram_gib)
    nodes = max(p.copies, math.ceil(total / budget))
    return {"bytes_per_vector_per_copy": round(per_vec, 1), "copies": p.copies, "vectors_total_gib":
            round(total / 2**30, 2), "knn_budget_per_node_gib": round(budget / 2**30, 2), "nodes_for_vectors": nodes,
            "encoding": p.vectors, "node_ram_gib": p.node_ram_gib,
            "heap_per_node_gib": round(min(F.JVM_HEAP.value * p.node_ram_gib, 31.0), 1)}


class Planner:
    def __init__(self, m: Measured, hnsw: HnswFit, p: Params):
        self.m, self.hnsw, self.p = m, hnsw, p
        self.pps = p.gpu_pairs_per_s or (F.GPUS[p.gpu].value if p.gpu in F.GPUS else None)
        if p.gpu != "none" and self.pps is None:
            raise ValueError(f"--gpu {p.gpu}: no cited throughput for it; give --gpu-pairs-per-s (measured on yours)")
        self.slots_per_replica = max(1, p.replica_cores)
        self.threads = F.search_threads(p.node_cores)
        rng = np.random.default_rng(p.seed)
        n = p.queries
        self.idx = rng.integers(0, len(m.bm25_ms), n)  # which measured query each simulated one resembles
        self.cand_idx = rng.integers(0, len(m.candidates), n)
        self.exits = rng.random(n) < m.exit_share
        self.arrivals = poisson_arrivals(p.qps, n, p.seed)

    def routes(self, depth: int, shards: int) -> tuple[list[list[Visit]], dict[str, float]]:
        m, p = self.m, self.p
        docs_per_shard = p.docs / shards
        knn_ms = self.hnsw.ms(docs_per_shard)
        routes, sums = [], {"replica": 0.0, "opensearch": 0.0, "gpu": 0.0}
        on_cpu = p.gpu == "none"
        for i in range(p.queries):
            bm = F.bm25_shard_ms(m.bm25_ms[self.idx[i]], docs_per_shard, m.corpus_docs)
            search = p.os_call_ms + max(bm, knn_ms)
            c = m.candidates[self.cand_idx[i]]
            cpu = m.embed_ms + m.fusion_ms
            if m.ltr is not None:
                cpu += m.features.get("fixed_ms", 0) + m.features.get("per_unit_ms", 0) * c
                cpu += m.ltr["fixed_ms"] + m.ltr["per_unit_ms"] * c
            pairs = 0 if self.exits[i] else min(depth, c)
            ce_ms = 0.0
            if pairs and m.ce is not None:
                ce_ms = (m.ce["fixed_ms"] + m.ce["per_unit_ms"] * pairs) if on_cpu else \
                    p.gpu_call_ms + pairs / self.pps * 1000.0
            r = [Visit(0, m.embed_ms), Visit(1, search), Visit(0, cpu - m.embed_ms)]
            if ce_ms:
                r.append(Visit(0 if on_cpu else 2, ce_ms))
            routes.append(r)
            sums["replica"] += cpu + (ce_ms if on_cpu else 0.0)
            sums["opensearch"] += search
            sums["gpu"] += 0.0 if on_cpu else ce_ms
        return routes, {k: v / p.queries for k, v in sums.items()}

    def stations(self, hw: Hardware) -> list[Station]:
        st = [Station("replica", hw.replicas * self.slots_per_replica),
              Station("opensearch", max(1, hw.nodes * self.threads // (2 * hw.shards)))]
        if self.p.gpu != "none":
            st.append(Station("gpu", max(hw.gpus, 1)))
        return st

    def run(self, routes, hw: Hardware) -> SimResult:
        return simulate(self.arrivals, routes, self.stations(hw), warmup=self.p.queries // 10)

    def fleet(self, depth: int) -> tuple[Hardware | None, SimResult | None, str, dict[str, float]]:
        """The smallest fleet meeting the p95 target at this depth (servers added where queries wait longest)."""
        p = self.p
        shards = max(1, math.ceil(p.docs / p.shard_docs))
        routes, mean = self.routes(depth, shards)
        lam = p.qps / 1000.0  # per ms
        mem_nodes = memory(p)["nodes_for_vectors"]
        # Start at 70% utilization of each pool (fewer would only queue), then add where the wait is.
        replicas = max(1, math.ceil(lam * mean["replica"] / (0.7 * self.slots_per_replica)))
        gpus = 0 if p.gpu == "none" else max(1, math.ceil(lam * mean["gpu"] / 0.7))
        os_slots = max(1, math.ceil(lam * mean["opensearch"] / 0.7))
        nodes = max(mem_nodes, math.ceil(os_slots * 2 * shards / self.threads))
        hw = Hardware(replicas, gpus, nodes, shards)
        service_floor = float(np.percentile([sum(v.service_ms for v in r) for r in routes], 95))
        if service_floor > p.p95_ms:
            return None, None, (f"p95 of the work alone is {service_floor:.0f} ms, above the {p.p95_ms:.0f} ms target "
                                f"(no amount of hardware queues it away)"), mean
        for _ in range(400):
            sim = self.run(routes, hw)
            if sim.p95 <= p.p95_ms and max(sim.utilization.values()) < 0.9:
                return hw, sim, "", mean
            worst = max(sim.wait_ms, key=lambda k: (sim.utilization[k] >= 0.9, sim.wait_ms[k]))
            if worst == "replica":
                hw.replicas += 1
            elif worst == "gpu":
                hw.gpus += 1
            else:
                hw.nodes += 1
        return None, None, "no fleet found within 400 steps", mean

    def p95_curve(self, depth: int, hw: Hardware, pool: str, sizes: Sequence[int]) -> list[dict]:
        routes, _ = self.routes(depth, hw.shards)
        out = []
        for n in sizes:
            h = Hardware(hw.replicas, hw.gpus, hw.nodes, hw.shards)
            setattr(h, {"replica": "replicas", "gpu": "gpus", "opensearch": "nodes"}[pool], n)
            sim = self.run(routes, h)
            out.append({"pool": pool, "size": n, "p95_ms": round(sim.p95, 1) if np.isfinite(sim.p95) else None,
                        "utilization": round(sim.utilization[pool], 3)})
        return out


def assumptions(m: Measured, hnsw: HnswFit, p: Params, planner: Planner) -> list[dict]:
    enc = F.ENCODINGS[p.vectors]
    out = [
        {"what": "BM25 time per query at the tuned collection's size", "value": f"median {np.median(m.bm25_ms):.1f} ms "
         f"at {m.corpus_docs:,} documents", "source": f"measured here by cascade tune ({m.source})"},
        F.BM25_MS_PER_MILLION.as_json(),
        {"what": "kNN (HNSW) search per shard", "value": f"{hnsw.a:.3f} + {hnsw.b:.3f} x log2(N) ms; "
         f"{hnsw.ms(p.docs / max(1, math.ceil(p.docs / p.shard_docs))):.2f} ms at "
         f"{p.docs / max(1, math.ceil(p.docs / p.shard_docs)):,.0f} vectors",
         "source": "measured here: faiss HNSW (M=%d, efSearch=%d, one thread) on %s at %s vectors, fitted "
                   "by log N" % (hnsw.m, hnsw.ef_search, hnsw.source, ", ".join(f"{n:,}" for n, _ in hnsw.points))},
        {**F.OS_CALL_MS.as_json(), "value": p.os_call_ms},
        {"what": "query embedding on a replica", "value": f"{m.embed_ms:.1f} ms", "source": "measured here by cascade tune"},
        {"what": "features and LTR per query", "value": (
            f"features {m.features.get('fixed_ms', 0):.2f} ms + {m.features.get('per_unit_ms', 0):.4f} ms per "
            f"candidate, LTR {(m.ltr or {}).get('fixed_ms', 0):.2f} ms + {(m.ltr or {}).get('per_unit_ms', 0):.5f} ms "
            f"per row; {np.mean(m.candidates):.0f} candidates"),
         "source": "measured here by cascade tune (non-negative least squares on every call)"},
        {"what": "cross-encoder on this CPU", "value": "-" if m.ce is None else
         f"{m.ce['fixed_ms']:.1f} ms + {m.ce['per_unit_ms']:.2f} ms per pair", "source": "measured here by cascade tune"},
        enc.as_json(), F.HNSW_OVERHEAD.as_json(), F.HNSW_M.as_json(), F.KNN_MEMORY_SHARE.as_json(),
        F.JVM_HEAP.as_json(), F.SEARCH_THREADS.as_json(),
        {"what": "OpenSearch searches per query", "value": f"2 (bm25 + knn) x {max(1, math.ceil(p.docs / p.shard_docs))}"
         f" shards, each holding a search thread for its shard's time",
         "source": "assumption: one shard-level task per shard and retriever (OpenSearch's query phase); "
                   f"primary shards of {p.shard_docs:,} documents (--shard-docs)"},
        {"what": "cascade replica", "value": f"{p.replica_cores} cores = {planner.slots_per_replica} queries at a time",
         "source": "assumption: the measured costs are core-milliseconds (cascade tune's calibration), so a "
                   "replica runs one query per core at that cost (conservative for the models, which use 2 "
                   "threads when a core is free)"},
        {"what": "early exit of the cross-encoder", "value": f"{m.exit_share:.0%} of queries",
         "source": "measured by cascade tune (the gate it chose, on its held-out split when it had one)"},
        {"what": "arrivals", "value": f"Poisson at {p.qps:g}/s, {p.queries:,} queries simulated (first 10% warm-up)",
         "source": "assumption (open-loop traffic)"},
    ]
    if p.gpu == "none":
        out.append({"what": "GPU", "value": "none: the cross-encoder runs on the replicas' CPUs",
                    "source": "--gpu none"})
    else:
        fig = F.GPUS.get(p.gpu)
        out.append(fig.as_json() if fig and not p.gpu_pairs_per_s else
                   {"what": f"cross-encoder throughput on {p.gpu}", "value": f"{planner.pps:g} pairs/s",
                    "source": "--gpu-pairs-per-s (given)"})
        out.append({**F.GPU_CALL_MS.as_json(), "value": p.gpu_call_ms})
    out.append({"what": "quality against depth", "value": ", ".join(f"{r['depth']}: {r['ndcg@10']:.4f}"
                                                                   for r in m.depth_curve),
                "source": f"measured by cascade tune ({m.curve_from or m.source}; nDCG@10 at the tuned settings); measured at "
                          f"{m.corpus_docs:,} documents, not at {p.docs:,}: re-measure on a sample of your corpus"})
    return out


def make_plan(m: Measured, hnsw: HnswFit, p: Params) -> Plan:
    planner = Planner(m, hnsw, p)
    depths = [r for r in m.depth_curve] or [{"depth": 0, "ndcg@10": float("nan")}]
    options = []
    for r in depths:
        hw, sim, note, _ = planner.fleet(int(r["depth"]))
        options.append(Option(int(r["depth"]), float(r["ndcg@10"]), hw, sim, note))
    feasible = [o for o in options if o.hardware is not None]
    chosen = None
    if feasible:
        best = max(o.ndcg for o in feasible)
        near = [o for o in feasible if o.ndcg >= best - p.tolerance]
        chosen = min(near, key=lambda o: (o.hardware.machines(), -o.ndcg))
    plan = Plan(p.docs, p.qps, p.p95_ms, p.dims, p.gpu, options, chosen, memory(p), assumptions(m, hnsw, p, planner),
                m, hnsw)
    if chosen is not None:
        _, plan.service_ms = planner.routes(chosen.depth, chosen.hardware.shards)
        pool = "gpu" if p.gpu != "none" and chosen.depth else "replica"
        have = chosen.hardware.gpus if pool == "gpu" else chosen.hardware.replicas
        sizes = sorted({max(1, have - 2), max(1, have - 1), have, have + 1, have + 3})
        plan.curve = planner.p95_curve(chosen.depth, chosen.hardware, pool, sizes)
    return plan
