"""The starter config `cascade index --corpus FILE --index NAME` writes for a new corpus.

Short and annotated, like the example in the README, rather than a dump of every
default: what is there runs (BM25 + kNN, fused by RRF, no stages yet), and the
commented lines show what to add next. docs/config.md lists every key.
"""

from __future__ import annotations

import json

import yaml

BACKENDS = ("embedded", "opensearch")


def _scalar(value: str) -> str:
    """``value`` as a YAML scalar that reads back as that same string (quoted when YAML would change it)."""
    try:
        plain = yaml.safe_load(value) == value and "#" not in value and ": " not in value
    except yaml.YAMLError:
        plain = False
    return value if plain else json.dumps(value)


_OPENSEARCH = """\
# The documents live in an OpenSearch cluster (2.x or 3.x); `cascade index --backend opensearch` creates
# the index there and loads the corpus. As written this matches the README's docker compose cluster.
backend:
  type: opensearch
  hosts: [https://localhost:9200]
  index: {index}{index_pad}# the index in the cluster (default: the cascade index name)
  username: admin
  password_env: OPENSEARCH_PASSWORD   # the password itself never goes in YAML
  verify_certs: false                 # the demo certificate is self-signed; delete this line for a real one
  # api_key_env: OPENSEARCH_API_KEY   # instead of username/password_env
"""

_TEMPLATE = """\
# Starter cascade written by `cascade index`; edit it and bump `version`.
# Every key, with its default: docs/config.md. Check it with `cascade config check configs`.
index: {name}
version: 1                        # bump when ranking changes (part of cache keys)
description: {description}
{backend}
fields:                           # `cascade index --rebuild` after changing fields
  title: {{type: text}}             # BM25 (english analyzer: stop words + Snowball stemming)
  text:  {{type: text}}
  # Filterable fields: add them here; `source` is the dotted path in a corpus record (default: the name).
  # journal:   {{type: keyword, source: metadata.journal}}    # --filter journal=Energy,Chemistry
  # year:      {{type: integer, source: metadata.year}}       # --filter 'year>=2020' (float too)
  # published: {{type: date, source: metadata.published}}

embedder: {{model: default, fields: [title, text]}}   # default: all-MiniLM-L6-v2 (shipped, no download)

retrievers:                       # run concurrently; each keeps its top k
  bm25: {{type: bm25, k: 100, fields: {{title: 1.0, text: 1.0}}}}   # per-field boosts
  knn:  {{type: knn, k: 100}}

fusion: {{method: rrf, k: 60, keep: 100}}   # or {{method: linear, normalize: minmax, weights: {{bm25: 1.0, knn: 1.0}}}}

# Re-ranking stages, cheapest first: each re-scores its top `rerank` hits and passes on `keep`.
stages: []
# An ltr stage needs a `features:` section and a model from `cascade features log` + `cascade train ltr`;
# a cross-encoder is a hub name or a folder under CASCADE_MODELS_DIR. Replace `stages: []` with:
# features: {{version: 1, keyword: {{k1: 1.2, b: 0.75}}, retrieval: true, semantic: true, query: true}}
# stages:
#   - {{type: ltr, model: {raw}-ltr, keep: 100}}
#   - {{type: cross_encoder, model: cross-encoder/ms-marco-MiniLM-L-6-v2, rerank: 20}}
"""


def starter_yaml(name: str, backend: str = "embedded") -> str:
    """An annotated starter config for index ``name`` on ``backend`` ("embedded" or "opensearch").

    It parses (``parse_config(yaml.safe_load(text), ...)``) into the same fields and embedder as
    ``cascade.config.starter_config(name)``, so the index built from either is the same.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {list(BACKENDS)}, got {backend!r}")
    index = _scalar(name)
    backend_block = ""
    if backend == "opensearch":
        backend_block = "\n" + _OPENSEARCH.format(index=index, index_pad=" " * max(1, 29 - len(index)))
    return _TEMPLATE.format(
        name=index,
        raw=name,
        description=json.dumps(f"Starter cascade for {name}; edit and bump version.", ensure_ascii=False),
        backend=backend_block,
    )
