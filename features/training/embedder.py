"""Distilling the cascade's reranker into its first stage: the bi-encoder fine-tuned on the reranker's margins.

The cascade's later stages know better than its first stage which documents
matter, but run on a hundred candidates at most: a relevant document the
first stage misses is lost. So the bi-encoder learns from the reranker on the
index's own training queries: for each query, the documents the current first
stage retrieves are scored by a rank profile (the teacher: by default the
index's default profile, whose last stage's scores over the documents it
scored are the targets), and the student is trained with margin-MSE
(Hofstätter et al. 2020): the difference of its cosines for a (better,
worse) pair of documents should match the teacher's score difference, scaled
once to the student's range. Hard negatives are those pairs: documents the
first stage ranks high and the teacher ranks lower. A judged relevant document
is the "better" side when the teacher scored it, else the teacher's best.

Evaluation queries are refused: a split named as evaluation (``test`` by
default) cannot be trained on, and a training query whose text is an
evaluation query's is left out. The result is a sentence-transformers folder
with ``cascade-training.json``; :func:`reembed` builds a new version of the
index with it (a new index name, the corpus embedded again, its config
written beside the others), so the old index keeps serving until the new one
is switched to.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from cascade.errors import CascadeError
from cascade.query import Query
from cascade.text import normalize_query
from features.training.loop import optimizer_step

TRAINING_FILE = "cascade-training.json"
FORMAT = "cascade-embedder/1"


@dataclass(frozen=True)
class Group:
    """A query, the better document and the worse ones, and the teacher's margin for each (better - worse > 0).
    One encoding of the query and of the better document serves every pair of the group."""

    query: str
    better: str  # document text
    worse: tuple[str, ...]
    margins: tuple[float, ...]
    ids: tuple[str, ...]  # better first

    @property
    def pairs(self) -> int:
        return len(self.worse)


def check_not_eval(train: Mapping[str, str], evaluation: Mapping[str, str], train_split: str,
                   eval_splits: list[str]) -> set[str]:
    """Training query ids that are evaluation queries (by id or text), to leave out. Refuses a split that is
    itself an evaluation split."""
    if train_split in eval_splits:
        raise CascadeError(f"--split {train_split}: it is an evaluation split ({', '.join(eval_splits)}); "
                           f"refusing to train on evaluation queries (train on another split)")
    texts = {normalize_query(t) for t in evaluation.values()}
    return {q for q, t in train.items() if q in evaluation or normalize_query(t) in texts}


def doc_text(rec: Mapping[str, Any] | None, fields: list[str]) -> str:
    """The text the index embeds for a document (as the index build joins it)."""
    return " ".join(str(rec[f]) for f in fields if rec and f in rec and rec[f] not in (None, ""))


async def mine(teacher: Any, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], *,
               pairs_per_query: int = 4, seed: int = 13, embed_fields: list[str],
               on_progress: Callable[[int, int], None] | None = None) -> tuple[list[Group], dict[str, Any]]:
    """A group per training query: the teacher ranks the first stage's candidates; a relevant (or the best)
    document it scored against ``pairs_per_query`` it scored lower (harder ones more often), with its margins."""
    rng = random.Random(seed)
    last = teacher.stages[-1].name if teacher.stages else None
    if last is None:
        raise CascadeError(f"teacher profile {teacher.profile!r} has no stage: a teacher re-ranks the first stage")
    groups: list[Group] = []
    windows: list[int] = []
    skipped = 0
    qids = [q for q in qrels if q in queries]
    for n, qid in enumerate(qids, start=1):
        q = teacher.validate(Query(text=queries[qid], size=10, id=qid))
        res = await teacher.search(q, validated=True)
        c = res.candidates
        scores = c.stage_scores.get(last)
        if scores is None:
            skipped += 1
            continue
        scored = [i for i in range(len(c)) if np.isfinite(scores[i])]
        windows.append(len(scored))
        if len(scored) < 2:
            skipped += 1
            continue
        await _fill(teacher, c, scored)
        order = sorted(scored, key=lambda i: -scores[i])
        relevant = [i for i in order if qrels[qid].get(c.ids[i], 0) > 0]
        top = relevant[0] if relevant else order[0]
        below = [i for i in order if scores[i] < scores[top] and qrels[qid].get(c.ids[i], 0) <= 0]
        if not below:
            skipped += 1
            continue
        # Harder negatives (ranked just below) are more likely, but the whole window is sampled.
        weights = [1.0 / (1 + k) ** 0.5 for k in range(len(below))]
        picked: set[int] = set()
        while len(picked) < min(pairs_per_query, len(below)):
            picked.add(rng.choices(below, weights)[0])
        worse = sorted(picked)
        groups.append(Group(q.text, doc_text(c.fields[top], embed_fields),
                            tuple(doc_text(c.fields[i], embed_fields) for i in worse),
                            tuple(float(scores[top] - scores[i]) for i in worse),
                            (c.ids[top], *(c.ids[i] for i in worse))))
        if on_progress:
            on_progress(n, len(qids))
    return groups, {"queries": len(groups), "skipped": skipped, "teacher_stage": last,
                    "pairs": sum(g.pairs for g in groups), "window": float(np.mean(windows)) if windows else 0.0}


async def _fill(cascade: Any, c: Any, rows: list[int]) -> None:
    missing = [i for i in rows if c.fields[i] is None]
    if missing:
        docs = await cascade.documents.fetch([c.ids[i] for i in missing])
        for i, d in zip(missing, docs):
            c.fields[i] = d


@dataclass
class DistillResult:
    folder: Path
    steps: int
    seconds: float
    first_loss: float
    last_loss: float
    pairs: int
    scale: float
    meta: dict[str, Any] = field(default_factory=dict)


def _encode(model: Any, texts: list[str], torch: Any) -> Any:
    feats = (getattr(model, "preprocess", None) or model.tokenize)(texts)
    out = model(dict(feats))["sentence_embedding"]
    return torch.nn.functional.normalize(out, dim=-1)


def _margins(model: Any, chunk: list[Group], torch: Any) -> Any:
    """The student's cosine margins (better - worse) of every pair of the chunk, in order."""
    q = _encode(model, [g.query for g in chunk], torch)
    b = _encode(model, [g.better for g in chunk], torch)
    w = _encode(model, [t for g in chunk for t in g.worse], torch)
    owner = torch.tensor([i for i, g in enumerate(chunk) for _ in g.worse])
    return (q[owner] * b[owner]).sum(-1) - (q[owner] * w).sum(-1)


def distill(base: str, groups: list[Group], out: Path, settings: Any, *, max_length: int = 256,
            batch: int = 8, epochs: int = 1, learning_rate: float = 2e-5, warmup: float = 0.1, seed: int = 13,
            max_steps: int | None = None, data: dict[str, Any] | None = None,
            on_step: Callable[[int, int, float], None] | None = None) -> DistillResult:
    """Fine-tune the bi-encoder ``base`` with margin-MSE on ``groups`` (``batch`` queries a step) and write it to
    ``out``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import get_linear_schedule_with_warmup

    from cascade.models.lookup import resolve_model

    if not groups:
        raise CascadeError("no training pairs: the teacher scored fewer than two documents for every query")
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    target, _ = resolve_model(base, settings)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = SentenceTransformer(target, device="cpu")
    model.max_seq_length = max_length
    # The teacher's margins are put on the student's scale once: their spread matched to that of the student's
    # own cosine margins on the same pairs before training (margin-MSE needs comparable units, not ranks).
    sample = groups[: min(len(groups), 64)]
    with torch.no_grad():
        model.eval()
        student = _margins(model, sample, torch).numpy()
    teacher = np.asarray([m for g in sample for m in g.margins])
    scale = float(np.std(student) / max(np.std(teacher), 1e-9)) if len(teacher) > 1 else 1.0
    model.train()
    order_rng = random.Random(seed)
    per_epoch = math.ceil(len(groups) / batch)
    total = per_epoch * epochs if not max_steps else min(per_epoch * epochs, max_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, int(round(warmup * total)), total)
    losses: list[float] = []
    t0 = time.perf_counter()
    step = 0
    while step < total:
        shuffled = list(groups)
        order_rng.shuffle(shuffled)
        for s in range(0, len(shuffled), batch):
            if step >= total:
                break
            chunk = shuffled[s: s + batch]
            margin = _margins(model, chunk, torch)
            target_m = torch.tensor([m * scale for g in chunk for m in g.margins], dtype=margin.dtype)
            loss = torch.nn.functional.mse_loss(margin, target_m)
            losses.append(optimizer_step(loss, model.parameters(), opt, sched, 1.0))
            step += 1
            if on_step:
                on_step(step, total, losses[-1])
    seconds = time.perf_counter() - t0
    model.eval()
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save(str(tmp))
    window = max(1, min(50, len(losses) // 10 or 1))
    pairs = sum(g.pairs for g in groups)
    meta = {"format": FORMAT, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "base": base, "base_resolved": target, "loss": "margin-mse", "queries": len(groups), "pairs": pairs,
            "teacher_scale": scale, "steps": step, "epochs": epochs, "batch": batch, "learning_rate": learning_rate,
            "max_length": max_length, "seed": seed, "seconds": round(seconds, 1),
            "torch_threads": torch.get_num_threads(), "loss_first": float(np.mean(losses[:window])),
            "loss_last": float(np.mean(losses[-window:])),
            "loss_curve": [round(float(np.mean(losses[i: i + window])), 6) for i in range(0, len(losses), window)],
            "data": data or {}}
    (tmp / TRAINING_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return DistillResult(out, step, seconds, meta["loss_first"], meta["loss_last"], pairs, scale, meta)


def reembed(cfg: Any, model: Path, new_index: str, corpus: Path, settings: Any, *,
            on_progress: Callable[[str, int, int | None], None] | None = None) -> tuple[Any, Path]:
    """A new version of the index: ``cfg`` under the name ``new_index`` with the distilled embedder, its corpus
    embedded again into a fresh index, and its config written to CASCADE_CONFIG_DIR (returned with its path)."""
    from cascade.config import dump_config, parse_config
    from cascade.datasets import LoadStats, count_lines, iter_corpus
    from connectors.embedded import build_index

    if new_index == cfg.index:
        raise CascadeError(f"--new-index {new_index}: that is the index being distilled; name a new version")
    data = cfg.model_dump(mode="json")
    data["index"] = new_index
    data["embedder"]["model"] = str(model.resolve())
    data["description"] = f"{cfg.description} Embedder distilled from the cascade ({model.name})".strip()
    new = parse_config(data, f"{new_index}.yaml")
    stats = LoadStats()
    build_index(new, iter_corpus(corpus, stats=stats), settings, source=str(corpus), total=count_lines(corpus),
                stats=stats, on_progress=on_progress)
    settings.config_dir.mkdir(parents=True, exist_ok=True)
    path = settings.config_dir / f"{new_index}.yaml"
    path.write_text(dump_config(new), encoding="utf-8")
    return new, path
