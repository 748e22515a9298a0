"""A forward index of term frequencies per document and field, for exact BM25 features.

Lucene-style engines keep postings by term; re-ranking needs the transpose: for
a few hundred candidate documents, how often each query term occurs in each
field, plus the collection statistics (document frequency, average length).
Stored as CSR arrays so a candidate set's term-frequency matrix is a handful
of vectorized numpy operations, not a tokenizer run per document.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np


class TermIndexBuilder:
    def __init__(self, fields: list[str]):
        self.fields = fields
        self.vocab: dict[str, dict[str, int]] = {f: {} for f in fields}
        self.offsets: dict[str, list[int]] = {f: [0] for f in fields}
        self.ids: dict[str, list[int]] = {f: [] for f in fields}
        self.tfs: dict[str, list[int]] = {f: [] for f in fields}
        self.lengths: dict[str, list[int]] = {f: [] for f in fields}

    def add(self, tokens_by_field: dict[str, list[str]]) -> None:
        for f in self.fields:
            toks = tokens_by_field.get(f, [])
            vocab = self.vocab[f]
            for term, tf in Counter(toks).items():
                self.ids[f].append(vocab.setdefault(term, len(vocab)))
                self.tfs[f].append(tf)
            self.offsets[f].append(len(self.ids[f]))
            self.lengths[f].append(len(toks))

    def save(self, folder: Path) -> None:
        arrays = {}
        for f in self.fields:
            arrays[f"{f}.offsets"] = np.asarray(self.offsets[f], dtype=np.int64)
            arrays[f"{f}.ids"] = np.asarray(self.ids[f], dtype=np.int32)
            arrays[f"{f}.tfs"] = np.asarray(self.tfs[f], dtype=np.int32)
            arrays[f"{f}.lengths"] = np.asarray(self.lengths[f], dtype=np.int32)
        np.savez(folder / "terms.npz", **arrays)
        with open(folder / "terms.json", "w", encoding="utf-8") as fh:
            json.dump({f: list(v) for f, v in self.vocab.items()}, fh, ensure_ascii=False)


class FieldTerms:
    """One field's forward index and collection statistics."""

    def __init__(self, vocab: list[str], offsets: np.ndarray, ids: np.ndarray, tfs: np.ndarray, lengths: np.ndarray):
        self.term_id = {t: i for i, t in enumerate(vocab)}
        self.offsets, self.ids, self.tfs, self.lengths = offsets, ids, tfs, lengths
        self.df = np.bincount(ids, minlength=len(vocab)).astype(np.float64)
        self.num_docs = len(lengths)
        self.avg_length = float(lengths.mean()) if len(lengths) else 0.0

    def doc_freqs(self, terms: list[str]) -> np.ndarray:
        return np.array([self.df[self.term_id[t]] if t in self.term_id else 0.0 for t in terms])

    def term_freqs(self, rows: np.ndarray, terms: list[str]) -> np.ndarray:
        """(len(rows), len(terms)) term-frequency matrix."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), len(terms)))
        col_of = {self.term_id[t]: j for j, t in enumerate(terms) if t in self.term_id}
        if not col_of or not len(rows):
            return out
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lens = ends - starts
        total = int(lens.sum())
        if total == 0:
            return out
        # Positions of every (candidate, term) entry, candidates' slices laid end to end.
        which = np.repeat(np.arange(len(rows)), lens)
        pos = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
        term_ids = self.ids[pos]
        lookup = np.full(int(max(col_of)) + 1, -1, dtype=np.int64)
        for tid, j in col_of.items():
            lookup[tid] = j
        inrange = term_ids < len(lookup)
        cols = np.full(total, -1, dtype=np.int64)
        cols[inrange] = lookup[term_ids[inrange]]
        hit = cols >= 0
        out[which[hit], cols[hit]] = self.tfs[pos[hit]]
        return out


def load_term_index(folder: Path) -> dict[str, FieldTerms]:
    vocab = json.loads((folder / "terms.json").read_text(encoding="utf-8"))
    arrays = np.load(folder / "terms.npz", allow_pickle=False)
    return {f: FieldTerms(v, arrays[f"{f}.offsets"], arrays[f"{f}.ids"], arrays[f"{f}.tfs"], arrays[f"{f}.lengths"])
            for f, v in vocab.items()}
