"""Where tuning's labels come from: a dataset split, a judgments file, or click logs; and which splits it may read.

A collection with a training split is tuned on it and never on ``test`` (its
evaluation split): asking is refused with the reason. A collection whose
only split is ``test`` (Cranfield, NPL) is tuned by cross-validation by query
on it, and every number reported is out of fold; it has no held-out split.

Click logs become graded labels under the position-based examination model
(Joachims, Swaminathan & Schnabel, "Unbiased Learning-to-Rank with Biased
Feedback", WSDM 2017): a result at rank k is examined with probability
(1/k)^eta, so clicks / propensity estimates P(relevant | examined).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cascade.errors import CascadeError, DatasetError
from cascade.text import normalize_query


def tuning_mode(splits: list[str], split: str, holdout: str | None, dataset: str) -> str:
    """``"split"`` (tune on ``split``, may evaluate on ``holdout``) or ``"cv"`` (only a test split: folds on it).

    Raises with the option named when asked to tune on the evaluation split or to hold out what is tuned on.
    """
    if split not in splits:
        raise DatasetError(f"--split {split}: {dataset} has no qrels for it (splits: {', '.join(splits) or 'none'})")
    if split == "test" and len(splits) > 1:
        others = ", ".join(s for s in splits if s != "test")
        raise CascadeError(f"--split test: test is {dataset}'s evaluation split and tuning must never read it; tune "
                           f"on {others} (add --holdout test to evaluate the proposal on test afterwards)")
    if holdout is not None:
        if holdout == split:
            raise CascadeError(f"--holdout {holdout}: it is the split being tuned on; hold out another one")
        if holdout not in splits:
            raise DatasetError(f"--holdout {holdout}: {dataset} has no qrels for it (splits: {', '.join(splits)})")
    return "cv" if split == "test" else "split"


def read_judgments(path: Path) -> dict[str, dict[str, int]]:
    """qrels from a BEIR TSV (``query-id corpus-id score`` with a header) or a TREC qrels file (4 columns)."""
    out: dict[str, dict[str, int]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"--qrels {path}: cannot read ({exc.strerror or exc})") from None
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or (n == 1 and not parts[-1].lstrip("-").isdigit()):
            continue
        if len(parts) == 4:
            q, _, d, g = parts
        elif len(parts) == 3:
            q, d, g = parts
        else:
            raise DatasetError(f"{path}:{n}: expected 'query-id corpus-id score' or TREC 'qid 0 docid rel'")
        try:
            out.setdefault(q, {})[d] = int(g)
        except ValueError:
            raise DatasetError(f"{path}:{n}: relevance {g!r} is not a whole number") from None
    if not out:
        raise DatasetError(f"--qrels {path}: no judgments in it")
    return out


def clicks_to_judgments(path: Path, *, eta: float = 1.0, min_impressions: int = 1,
                        relevant: float = 0.5, highly: float = 1.0) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """(queries, graded qrels) from a click log, one JSON object per line:
    ``{"query": "...", "shown": ["d3", "d1", ...], "clicked": ["d1"]}`` (``shown`` in rank order).

    Per (query, document): r = sum over impressions of click * rank^eta / impressions, the inverse-propensity
    estimate of P(relevant | examined). Grade 2 when r >= ``highly``, 1 when r >= ``relevant``, else 0 (judged
    not relevant). Documents shown fewer than ``min_impressions`` times are left unjudged.
    """
    stats: dict[str, dict[str, list[float]]] = {}
    texts: dict[str, str] = {}
    try:
        raw = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"--clicks {path}: cannot read ({exc.strerror or exc})") from None
    for n, line in enumerate(raw, start=1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
            text, shown, clicked = normalize_query(str(ev["query"])), list(ev["shown"]), set(ev.get("clicked") or [])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}:{n}: expected {{\"query\", \"shown\": [...], \"clicked\": [...]}} ({exc})") from None
        if not text:
            continue
        unknown = clicked - set(shown)
        if unknown:
            raise DatasetError(f"{path}:{n}: clicked {sorted(unknown)[:3]} were not shown")
        qid = "c" + hashlib.sha1(text.casefold().encode("utf-8")).hexdigest()[:12]
        texts.setdefault(qid, text)
        per = stats.setdefault(qid, {})
        for rank, d in enumerate(shown, start=1):
            s = per.setdefault(str(d), [0.0, 0.0])
            s[0] += (rank ** eta) if d in clicked else 0.0
            s[1] += 1
    qrels: dict[str, dict[str, int]] = {}
    for qid, per in stats.items():
        judged = {d: (2 if w / imp >= highly else 1 if w / imp >= relevant else 0)
                  for d, (w, imp) in per.items() if imp >= min_impressions}
        if any(g > 0 for g in judged.values()):
            qrels[qid] = judged
    if not qrels:
        raise DatasetError(f"--clicks {path}: no query has a clicked document shown at least {min_impressions} times")
    return texts, qrels
