"""Text analysis shared by indexing, querying and feature extraction.

BM25 features must tokenize exactly as the index did, or term statistics would
not line up; so every component takes its analyzer from here.
"""

from __future__ import annotations

from functools import lru_cache

import tantivy

# tantivy tokenizer names registered on every embedded index, by config analyzer kind.
ANALYZERS = {"english": "cascade_english", "standard": "cascade_standard"}


@lru_cache(maxsize=None)
def analyzer(kind: str) -> tantivy.TextAnalyzer:
    """english: split on non-alphanumerics, drop tokens over 40 chars, lowercase, English stop words, Snowball.

    standard: the same without stop words and stemming.
    """
    b = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(tantivy.Filter.remove_long(40))
    b = b.filter(tantivy.Filter.lowercase())
    if kind == "english":
        b = b.filter(tantivy.Filter.stopword("english")).filter(tantivy.Filter.stemmer("english"))
    elif kind != "standard":
        raise ValueError(f"unknown analyzer {kind!r}")
    return b.build()


def analyze(kind: str, text: str) -> list[str]:
    return analyzer(kind).analyze(text) if text else []
