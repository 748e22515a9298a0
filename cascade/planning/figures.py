"""Public figures the planner uses for what cannot be measured on this machine, each with where it comes from.

Nothing here is tuned to make a plan look good: every number is either a
vendor's documented formula or default, a model card's benchmark, or an
explicit assumption marked as such (``source`` says which), and ``cascade
plan`` prints them all beside its answer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    key: str
    value: float
    unit: str
    what: str
    source: str
    url: str = ""

    def as_json(self) -> dict:
        return {"key": self.key, "value": self.value, "unit": self.unit, "what": self.what, "source": self.source,
                **({"url": self.url} if self.url else {})}


OS_KNN_DOCS = "https://docs.opensearch.org/2.18/search-plugins/knn/knn-vector-quantization/"

# Bytes per dimension of a stored vector, by encoding; the HNSW graph adds 8 * M bytes per vector, and OpenSearch
# estimates 10% overhead on top: memory per vector per copy = 1.1 * (bytes_per_dim * d + 8 * M).
ENCODINGS: dict[str, Figure] = {
    "fp32": Figure("hnsw_fp32", 4.0, "bytes/dimension", "HNSW, float vectors: 1.1 x (4 x d + 8 x M) bytes per vector "
                   "per copy", "OpenSearch k-NN documentation, memory estimation (faiss/nmslib HNSW)", OS_KNN_DOCS),
    "fp16": Figure("hnsw_fp16", 2.0, "bytes/dimension", "faiss 16-bit scalar quantization (SQfp16): "
                   "1.1 x (2 x d + 8 x M)", "OpenSearch documentation, Faiss 16-bit scalar quantization",
                   "https://docs.opensearch.org/latest/vector-search/optimizing-storage/faiss-16-bit-quantization/"),
    "byte": Figure("hnsw_byte", 1.0, "bytes/dimension", "byte vectors (quantized before ingestion): "
                   "1.1 x (d + 8 x M)", "OpenSearch documentation, k-NN vector quantization: byte vectors",
                   OS_KNN_DOCS),
    "binary": Figure("hnsw_binary", 0.125, "bytes/dimension", "1-bit binary quantization (32x compression; "
                     "rescoring recommended): 1.1 x (d / 8 + 8 x M)", "OpenSearch documentation, k-NN vector quantization: binary quantization",
                     OS_KNN_DOCS),
}

HNSW_OVERHEAD = Figure("hnsw_overhead", 1.1, "x", "overhead factor on raw vector + graph bytes",
                       "OpenSearch k-NN documentation, memory estimation", OS_KNN_DOCS)
HNSW_GRAPH_BYTES = Figure("hnsw_graph", 8.0, "bytes per link", "graph links per vector: 8 x M bytes",
                          "OpenSearch k-NN documentation, memory estimation", OS_KNN_DOCS)
KNN_MEMORY_SHARE = Figure("knn_circuit_breaker", 0.5, "of RAM outside the JVM heap",
                          "native memory the k-NN plugin may use for graphs (knn.memory.circuit_breaker.limit default)",
                          "OpenSearch vector search settings", "https://docs.opensearch.org/2.19/vector-search/settings/")
JVM_HEAP = Figure("jvm_heap", 0.5, "of RAM, at most 32 GiB", "OpenSearch JVM heap: half the node's RAM, capped below "
                  "32 GiB (compressed pointers); the k-NN settings page's example uses the same split",
                  "OpenSearch documentation (installing: important settings; vector search settings)",
                  "https://docs.opensearch.org/2.19/vector-search/settings/")
SEARCH_THREADS = Figure("search_threads", 1.5, "x cores + 1", "search thread pool size per node: int(3 x cores / 2) + 1",
                        "OpenSearch documentation, thread pools",
                        "https://docs.opensearch.org/latest/install-and-configure/configuring-opensearch/thread-pool-settings/")
BM25_MS_PER_MILLION = Figure("bm25_ms_per_million_docs", 2.8, "ms per million documents (per shard)",
                             "BM25 query latency growth with the documents a shard searches",
                             "OpenSearch benchmark on MS MARCO, as cited in issue 12 (not re-derived here)")
MINILM_V100 = Figure("minilm_l6_v100_pairs_per_s", 1800.0, "pairs/s",
                     "MiniLM-L6 cross-encoder throughput on one V100 GPU",
                     "cross-encoder/ms-marco-MiniLM-L-6-v2 model card (docs/sec, V100)",
                     "https://huggingface.co/cross-encoder/ms-marco-MiniLM-L-6-v2")
GPU_CALL_MS = Figure("gpu_call_ms", 2.0, "ms per rerank call", "network + HTTP + tokenization overhead of one call to "
                     "a TEI rerank server", "assumption (not measured here: no GPU, no TEI server); set --gpu-call-ms")
OS_CALL_MS = Figure("opensearch_call_ms", 5.0, "ms per search request", "network, coordination and merging of one "
                    "_msearch over the shards (besides the per-shard search time)",
                    "assumption (no OpenSearch cluster here); set --os-call-ms")
HNSW_M = Figure("hnsw_m", 16.0, "links", "HNSW M (graph degree)", "OpenSearch faiss/nmslib default m = 16",
                "https://docs.opensearch.org/latest/mappings/supported-field-types/knn-vector/")

GPUS = {"v100": MINILM_V100}


def hnsw_bytes_per_vector(dims: int, m: int = 16, encoding: str = "fp32") -> float:
    """OpenSearch's estimate of native memory per vector per copy: 1.1 x (bytes_per_dim x d + 8 x M)."""
    enc = ENCODINGS[encoding]
    return HNSW_OVERHEAD.value * (enc.value * dims + HNSW_GRAPH_BYTES.value * m)


def knn_budget_bytes(node_ram_gib: float) -> float:
    """Native memory a data node gives HNSW graphs: the k-NN share of what the heap leaves."""
    heap = min(JVM_HEAP.value * node_ram_gib, 31.0)
    return KNN_MEMORY_SHARE.value * (node_ram_gib - heap) * 2**30


def search_threads(cores: int) -> int:
    return int(cores * 3 / 2) + 1


def bm25_shard_ms(base_ms: float, docs_per_shard: float, measured_docs: float = 0.0) -> float:
    """BM25 latency on one shard: what was measured here at ``measured_docs`` plus the cited growth per million."""
    return base_ms + BM25_MS_PER_MILLION.value * max(docs_per_shard - measured_docs, 0.0) / 1e6
