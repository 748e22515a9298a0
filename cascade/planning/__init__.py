"""``cascade plan``: depths, replicas, GPUs and OpenSearch nodes for a corpus size, a query rate and a p95 target.

- :mod:`cascade.planning.figures`: cited public figures (HNSW memory, BM25 growth, MiniLM on a V100, OpenSearch
  heap, k-NN memory, search threads), each with its source
- :mod:`cascade.planning.hnsw`: kNN search time per shard, measured here with faiss HNSW and extrapolated by log N
- :mod:`cascade.planning.simulate`: the discrete-event simulator (FIFO pools of servers)
- :mod:`cascade.planning.plan`: inputs from a ``cascade tune`` report, the fleet search, the recommendation
- :mod:`cascade.planning.check`: the simulator against the real cascade on this machine
- :mod:`cascade.planning.report`: tables, Markdown, the chart
"""
