"""kNN search time per shard, measured on this machine: faiss HNSW at sizes it can hold, extrapolated by log N.

OpenSearch's faiss engine searches the same kind of graph; what cannot be
measured here is a 10-million-vector graph, so the planner fits
``ms = a + b * log2(N)`` (HNSW's expected search cost grows with the log of
the graph size) on graphs built here at a few sizes. Their vectors are the
tuned collection's own document embeddings, each copy jittered so the graph
grows with the collection's cluster structure (uniformly random vectors have
none, and make HNSW look far slower than it is on real embeddings); queries
are jittered held-out copies too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass
class HnswFit:
    source: str
    dims: int
    m: int
    ef_search: int
    a: float
    b: float
    points: list[tuple[int, float]] = field(default_factory=list)  # (vectors, median ms per query)

    def ms(self, n: float) -> float:
        return max(self.a + self.b * np.log2(max(n, 2.0)), min(p[1] for p in self.points) if self.points else 0.0)

    def as_json(self) -> dict:
        return {"vectors": self.source, "dims": self.dims, "m": self.m, "ef_search": self.ef_search, "ms = a + b*log2(N)":
                {"a": round(self.a, 4), "b": round(self.b, 4)},
                "measured": [{"vectors": n, "median_ms": round(ms, 4)} for n, ms in self.points]}


def _jittered(base: np.ndarray, n: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    rows = base[rng.integers(0, len(base), n)]
    x = rows + rng.normal(scale=noise / np.sqrt(base.shape[1]), size=rows.shape).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def measure_hnsw(base: np.ndarray | None = None, dims: int = 384, m: int = 16, ef_search: int = 128,
                 sizes: Sequence[int] = (10_000, 40_000), k: int = 100, queries: int = 200, noise: float = 0.3,
                 seed: int = 13) -> HnswFit:
    """Build faiss HNSW graphs at ``sizes`` from jittered copies of ``base`` (document embeddings; None: random
    unit vectors) and time single-query top-``k`` searches on one thread (after a warm-up)."""
    import faiss

    faiss.omp_set_num_threads(1)  # one search per shard runs on one thread
    rng = np.random.default_rng(seed)
    if base is not None:
        base = np.asarray(base, dtype=np.float32)
        dims = base.shape[1]
    pts = []
    for n in sizes:
        if base is None:
            x = rng.normal(size=(n, dims)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            q = rng.normal(size=(queries, dims)).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
        else:
            x, q = _jittered(base, n, rng, noise), _jittered(base, queries, rng, noise)
        index = faiss.IndexHNSWFlat(dims, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.add(x)
        index.hnsw.efSearch = max(ef_search, k)
        index.search(q[: min(20, queries)], k)  # warm-up
        times = []
        for i in range(queries):
            t = time.perf_counter()
            index.search(q[i:i + 1], k)
            times.append((time.perf_counter() - t) * 1e3)
        pts.append((int(n), float(np.median(times))))
    xs = np.log2([n for n, _ in pts])
    ys = np.array([ms for _, ms in pts])
    b, a = np.polyfit(xs, ys, 1) if len(pts) > 1 else (0.0, ys[0])
    source = "jittered copies of the collection's document embeddings" if base is not None else "random unit vectors"
    return HnswFit(source, dims, m, ef_search, float(a), float(max(b, 0.0)), pts)
