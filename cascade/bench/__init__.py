"""Benchmarks behind the numbers in docs/benchmarks.md (run by `make bench`, one `cascade bench-*` command each).

Every benchmark opens its cascade through :mod:`cascade.builder`, runs on the
same stages the service runs (deeper or shallower views come from
``Cascade.with_overrides`` and ``Cascade.prefix``), and returns a result
object that renders its own terminal table (``table()`` / ``tables()``) and
Markdown section (``markdown(command, machine)``, filed under ``section()``):

- :mod:`cascade.bench.naive`: the naive BM25 + cross-encoder pipeline beside the cascade
- :mod:`cascade.bench.combine`: every way to combine a cross-encoder with the stage before it
- :mod:`cascade.bench.ltr`: features + LightGBM cost per query; LTR cross-validation by query
- :mod:`cascade.bench.backends`: cross-encoder backends (torch, ONNX) on the same pairs; fine-tuned models
- :mod:`cascade.bench.microbatch`: concurrent clients per request vs through the micro-batcher
- :mod:`cascade.bench.serve`: the HTTP service (cache hits under load, uncached searches)
- :mod:`cascade.bench.overload`: uncached searches beyond capacity: admission (503 + Retry-After) against queueing
- :mod:`cascade.bench.os_features`: the OpenSearch keyword-feature round trip beside the embedded features step
- :mod:`cascade.bench.load`: load generation and process plumbing the service benchmarks share

Timings are medians and tail percentiles over many queries measured in one
process, never assertions in unit tests: these machines are noisy.
"""
