"""Turning (query, document) pairs into padded token batches, and scoring them without letting one document fail the rest.

Both local backends (torch and ONNX Runtime) tokenize here, so they see the
same token ids: their scores can be compared pair by pair, and truncation
behaves the same whichever runs. Documents arrive from stored fields of any
corpus, so nothing about them is trusted: they are cleaned, cut by tokens,
and a document that still cannot be scored gets the documented fallback
score instead of failing its neighbours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from cascade.text import clean_text

log = logging.getLogger(__name__)

# Characters kept per allowed token before the tokenizer runs. Natural text averages 4-6 characters a
# token, so truncation by tokens decides in practice; the cap only bounds tokenizer work on a megabyte document.
CHARS_PER_TOKEN_CAP = 32

__all__ = ["CHARS_PER_TOKEN_CAP", "PairEncoder", "clean_text", "fallback_scores", "score_pairs", "score_requests"]


def fallback_scores(scores: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Fill the documents that could not be scored with (lowest score of the batch) - 1.

    They rank below every scored document of the call, keep their incoming order among
    themselves (the stage sorts stably), and the value stays on the scale of the model's
    scores. When nothing could be scored they all get 0.0.
    """
    out = np.asarray(scores, dtype=np.float64).copy()
    ok = ok & np.isfinite(out)
    out[~ok] = (out[ok].min() - 1.0) if ok.any() else 0.0
    return out


@dataclass
class Batch:
    """Rows ``index`` of the call, padded to their longest member only."""

    index: np.ndarray
    inputs: dict[str, np.ndarray]


class PairEncoder:
    """A fast tokenizer (``tokenizers.Tokenizer``) set up for cross-encoder pairs.

    The query comes first and is kept whole up to half the token budget; the document
    is cut by tokens (``only_second``) to fill the rest. Pairs are sorted by token
    length before batching so that each batch pads to a similar length.
    """

    def __init__(self, tokenizer: Any, max_length: int, pad_id: int, input_names: list[str]):
        # Our own copies: truncation and padding are settings of the tokenizer object, shared by every caller.
        tok = tokenizer.__class__.from_str(tokenizer.to_str())
        tok.no_padding()
        tok.enable_truncation(max_length, strategy="only_second")
        single = tokenizer.__class__.from_str(tokenizer.to_str())  # only_second refuses a lone sequence
        single.no_padding()
        single.enable_truncation(max_length)
        self.tok, self.single, self.max_length, self.pad_id = tok, single, max_length, pad_id
        self.input_names = input_names
        # [CLS] q [SEP] d [SEP] for BERT; RoBERTa-style templates add one more: measure instead of assuming.
        self.specials = len(tok.encode("a", "b").ids) - 2 * len(single.encode("a", add_special_tokens=False).ids)
        self.query_tokens = max(1, (max_length - self.specials) // 2)
        self.max_chars = max_length * CHARS_PER_TOKEN_CAP

    def cut_query(self, query: str) -> str:
        """The query, cut at a token boundary so that at least half the budget is left for the document."""
        query = clean_text(query, self.max_chars)
        enc = self.single.encode(query, add_special_tokens=False)
        if len(enc.ids) <= self.query_tokens:
            return query
        return query[: enc.offsets[self.query_tokens - 1][1]]

    def encode(self, query: str, docs: list[str]) -> tuple[list[Any], np.ndarray]:
        """Token encodings of the non-empty documents and a mask of which documents have one."""
        q = self.cut_query(query)
        texts = [clean_text(d, self.max_chars) for d in docs]
        ok = np.array([bool(t.strip()) for t in texts], dtype=bool)
        pairs = [(q, t) for t, good in zip(texts, ok) if good]
        try:
            encs: list[Any] = self.tok.encode_batch(pairs)
        except Exception:  # one pair the tokenizer refuses: find it, keep the others
            encs = []
            for p in pairs:
                try:
                    encs.append(self.tok.encode(*p))
                except Exception as exc:
                    log.warning("cross-encoder: a document could not be tokenized (%s); it gets the fallback score", exc)
                    encs.append(None)
        full: list[Any] = [None] * len(docs)
        for i, e in zip(np.flatnonzero(ok), encs):
            full[i] = e
        ok &= np.array([e is not None for e in full], dtype=bool)
        return full, ok

    def batches(self, encodings: list[Any], ok: np.ndarray, batch_size: int) -> list[Batch]:
        """Length-sorted batches of the encodable rows, each padded only to its own longest row."""
        rows = np.flatnonzero(ok)
        lengths = np.array([len(encodings[i].ids) for i in rows], dtype=np.int64)
        rows = rows[np.argsort(-lengths, kind="stable")]
        out = []
        for s in range(0, len(rows), batch_size):
            idx = rows[s: s + batch_size]
            width = max(len(encodings[i].ids) for i in idx)
            ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            types = np.zeros((len(idx), width), dtype=np.int64)
            for r, i in enumerate(idx):
                e = encodings[i]
                n = len(e.ids)
                ids[r, :n], mask[r, :n], types[r, :n] = e.ids, e.attention_mask, e.type_ids
            arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            out.append(Batch(idx, {k: arrays[k] for k in self.input_names}))
        return out


def score_pairs(encoder: PairEncoder, query: str, docs: list[Any], batch_size: int,
                run: Callable[[dict[str, np.ndarray]], np.ndarray]) -> np.ndarray:
    """Score every document with ``run`` (one padded batch in, one logit per row out).

    A batch that fails is retried row by row, so one bad row costs only itself; a row that still cannot be
    scored (or an empty document) is NaN. If no row at all can be scored the model itself is broken and the
    error is raised (the controller then skips the stage).
    """
    return score_requests(encoder, [(query, docs)], batch_size, run)[0]


def score_requests(encoder: PairEncoder, requests: list[tuple[str, list[Any]]], batch_size: int,
                   run: Callable[[dict[str, np.ndarray]], np.ndarray]) -> list[np.ndarray]:
    """Score several (query, documents) requests together: one scores array per request, in order.

    The pairs of all requests are sorted by token length *across* requests before batching, so a
    batch mixes requests and pads little (the micro-batcher's use). Fault isolation is per row as in
    :func:`score_pairs`: a batch that fails is retried row by row, and a row that still fails, like an
    empty document, gets its own request's fallback score later (NaN here). Only
    when no row of any request could be scored is the model broken: the first error is raised, for all.
    """
    encodings: list[Any] = []
    oks: list[np.ndarray] = []
    for query, docs in requests:
        if docs:
            e, ok = encoder.encode(query, list(docs))
        else:
            e, ok = [], np.zeros(0, dtype=bool)
        encodings.extend(e)
        oks.append(ok)
    ok_all = np.concatenate(oks) if oks else np.zeros(0, dtype=bool)
    scores = np.full(len(encodings), np.nan)
    errors: list[Exception] = []
    for b in encoder.batches(encodings, ok_all, batch_size):
        try:
            scores[b.index] = run(b.inputs)
            continue
        except Exception as exc:
            if len(b.index) == 1:
                errors.append(exc)
                continue
        for r, i in enumerate(b.index):
            one = {k: v[r: r + 1, : int(b.inputs["attention_mask"][r].sum())] for k, v in b.inputs.items()}
            try:
                scores[i] = run(one)[0]
            except Exception as exc:
                errors.append(exc)
    good_all = ok_all & np.isfinite(scores)
    if errors and not good_all.any():
        raise errors[0]
    out, start = [], 0
    for ok in oks:
        stop = start + len(ok)
        good = good_all[start:stop]
        if (~good & ok).any():
            log.warning("cross-encoder: %d of %d documents could not be scored; they get the fallback score",
                        int((~good & ok).sum()), len(ok))
        # NaN marks a row that could not be scored: the stage gives it the fallback over its whole window
        # (cached scores included), and no cache ever stores it.
        out.append(np.where(good, scores[start:stop], np.nan) if len(ok) else np.zeros(0))
        start = stop
    return out
