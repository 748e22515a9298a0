"""Which documents a model reads only in part; Cohere's ``max_tokens_per_doc`` and TEI's
``truncation_direction: Left`` applied before ranking.

A rerank server that truncates silently (Cohere v2 at 4,096 tokens) leaves the caller guessing why a long
document ranked low; these routes count every document a stage read only in part and say so (Cohere's
``meta.warnings``, the ``X-Cascade-Truncated`` header elsewhere). A stage's limit is found from what it
scores with, without asking its type: a local cross-encoder's token budget (its
:class:`~cascade.models.pair_encoding.PairEncoder`: the query kept whole up to half, the document cut to
the rest), or the character cap a remote model or an LLM prompt cuts documents at.
"""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import numpy as np

from cascade.candidates import Candidates
from cascade.models.pair_encoding import PairEncoder

CHARS_PER_TOKEN = 4  # the usual estimate for stages that count characters, not tokens


def pair_encoder(stage: Any) -> PairEncoder | None:
    """The tokenizer set-up a stage's local model scores with (through the cache and batching layers), if any."""
    obj = getattr(stage, "scorer", None)
    for _ in range(6):
        if obj is None:
            return None
        enc = getattr(obj, "encoder", None)
        if isinstance(enc, PairEncoder):
            return enc
        obj = getattr(obj, "inner", None) or getattr(obj, "runtime", None)
    return None


def char_cap(stage: Any) -> int | None:
    """Characters of a document a stage sends on (remote rerank APIs, LLM prompts), if it caps them."""
    obj = getattr(stage, "scorer", None)
    for _ in range(6):
        if obj is None:
            break
        cap = getattr(obj, "max_chars", None)
        if isinstance(cap, int):
            return cap
        obj = getattr(obj, "inner", None) or getattr(obj, "runtime", None)
    cap = getattr(getattr(stage, "cfg", None), "max_doc_chars", None)
    return cap if isinstance(cap, int) else None


def _stage_limits(enc: PairEncoder, query: str) -> tuple[int, int]:
    """(document token budget, tokens of the query and special tokens) of one pair for this encoder."""
    q = len(enc.single.encode(enc.cut_query(query), add_special_tokens=False).ids)
    return max(1, enc.max_length - enc.specials - q), q + enc.specials


def measure(stages: Sequence[Any], query: str, texts: dict[str, list[str]],
            scored: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
    """(which documents some stage read only in part, tokens read in all) over the documents each stage scored.

    ``texts``: per stage name, the text it reads of each document; ``scored``: per stage, which it scored.
    Blocking (tokenizes): run it in a thread.
    """
    n = len(next(iter(texts.values()))) if texts else 0
    cut = np.zeros(n, dtype=bool)
    tokens = 0
    for st in stages:
        docs = texts.get(st.name)
        mask = scored.get(st.name)
        if docs is None or mask is None or not mask.any():
            continue
        rows = np.flatnonzero(mask)
        enc = pair_encoder(st)
        if enc is not None:
            budget, fixed = _stage_limits(enc, query)
            encs = enc.single.encode_batch([docs[i][: enc.max_chars] for i in rows], add_special_tokens=False)
            lens = np.array([len(e.ids) for e in encs], dtype=np.int64)
            over = (lens > budget) | np.array([len(docs[i]) > enc.max_chars for i in rows], dtype=bool)
            tokens += int(np.minimum(lens, budget).sum() + fixed * len(rows))
        else:
            cap = char_cap(st)
            lens = np.array([len(docs[i]) for i in rows], dtype=np.int64)
            over = lens > cap if cap is not None else np.zeros(len(rows), dtype=bool)
            kept = np.minimum(lens, cap) if cap is not None else lens
            tokens += int(np.ceil((kept + len(query)) / CHARS_PER_TOKEN).sum())
        cut[rows[over]] = True
    return cut, tokens


def cut_to_tokens(stages: Sequence[Any], cands: Candidates, field: str, max_tokens: int) -> np.ndarray:
    """Cut each document's ``field`` to ``max_tokens`` tokens (Cohere v2's ``max_tokens_per_doc``), in place.

    Tokens are the first local cross-encoder's; without one, ``CHARS_PER_TOKEN`` characters a token.
    Returns which documents were cut.
    """
    enc = next((e for e in (pair_encoder(s) for s in stages) if e is not None), None)
    n = len(cands)
    cut = np.zeros(n, dtype=bool)
    texts = [(f or {}).get(field) or "" for f in cands.fields]
    if enc is None:
        limit = max_tokens * CHARS_PER_TOKEN
        for i, t in enumerate(texts):
            if len(t) > limit:
                cands.fields[i] = {**(cands.fields[i] or {}), field: t[:limit]}
                cut[i] = True
        return cut
    if max_tokens >= enc.max_length:  # the model's own limit is tighter: `measure` reports what it cuts
        return cut
    encs = enc.single.encode_batch([t[: enc.max_chars] for t in texts], add_special_tokens=False)
    for i, e in enumerate(encs):
        if len(e.ids) > max_tokens:
            cands.fields[i] = {**(cands.fields[i] or {}), field: texts[i][: e.offsets[max_tokens - 1][1]]}
            cut[i] = True
    return cut


_WHOLE: "weakref.WeakKeyDictionary[PairEncoder, Any]" = weakref.WeakKeyDictionary()


def _whole(enc: PairEncoder) -> Any:
    """A copy of the encoder's tokenizer that never truncates (its own cuts at the end), made once per encoder."""
    tok = _WHOLE.get(enc)
    if tok is None:
        tok = enc.single.__class__.from_str(enc.single.to_str())
        tok.no_truncation()
        _WHOLE[enc] = tok
    return tok


def keep_ends(stages: Sequence[Any], cands: Candidates, field: str, query: str) -> np.ndarray:
    """Cut each document's ``field`` from the left to what the first stage reads with ``query`` (TEI's
    ``truncation_direction: Left``), in place: the model then reads the document's end instead of its start.

    The limit is the first local cross-encoder's token budget for the document (``query`` kept as it keeps
    it); without one, the first character cap of a remote model or LLM prompt. Returns which were cut.
    """
    n = len(cands)
    cut = np.zeros(n, dtype=bool)
    texts = [(f or {}).get(field) or "" for f in cands.fields]
    enc = next((e for e in (pair_encoder(s) for s in stages) if e is not None), None)
    if enc is None:
        cap = next((c for c in (char_cap(s) for s in stages) if c), None)
        for i, t in enumerate(texts):
            if cap is not None and len(t) > cap:
                cands.fields[i] = {**(cands.fields[i] or {}), field: t[-cap:]}
                cut[i] = True
        return cut
    budget, _ = _stage_limits(enc, query)
    tails = [t[-enc.max_chars:] for t in texts]
    for i, e in enumerate(_whole(enc).encode_batch(tails, add_special_tokens=False)):
        over = len(e.ids) > budget
        if over or len(tails[i]) < len(texts[i]):
            cands.fields[i] = {**(cands.fields[i] or {}), field: tails[i][e.offsets[len(e.ids) - budget][0]:] if over
                               else tails[i]}
            cut[i] = True
    return cut
