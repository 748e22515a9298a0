"""Fine-tuning a cross-encoder on judgments, with hard negatives mined by the index's own first stage.

A cross-encoder learns most from the documents the cascade would actually
show it: the near misses the first stage ranks high. So training groups are
mined from the index the model will serve (its BM25, kNN or fused list), not
from an unrelated negative sampler, and each group is one relevant document,
some mined hard negatives and some random documents.

The loss is listwise (softmax cross-entropy over each group with the
relevant document as the target): a pointwise binary loss collapsed to the
base rate on this data (see the shipped model's TRAINING.md). The loop is
written here rather than through sentence-transformers' trainer because the
pairs must be tokenized exactly as the serving path tokenizes them
(:class:`cascade.models.pair_encoding.PairEncoder`: query kept first, document cut
by tokens), and because the trainer would add ``datasets`` and ``accelerate``
for a loop of forty lines. The result is a Hugging Face model folder
(safetensors, tokenizer, config) that the ``cross_encoder`` stage loads by
path or by name under ``CASCADE_TRAINED_DIR``, plus ``cascade-training.json``
recording the recipe, the data and the loss curve.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cascade.errors import CascadeError, ConfigError
from features.training.loop import optimizer_step

TRAINING_FILE = "cascade-training.json"
FORMAT = "cascade-cross-encoder/1"


class DataSpec(BaseModel):
    """One source of training groups: a dataset's judgments, or its titles as unsupervised queries."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="BEIR dataset folder under CASCADE_DATA_DIR.")
    split: str = Field(default="train", description="qrels split whose judgments are used.")
    index: str | None = Field(default=None, description="Index that mines hard negatives (default: the dataset's name).")
    min_grade: int = Field(default=1, ge=1, description="Judgments with at least this grade are positives.")
    cap: int | None = Field(default=None, ge=1, description="At most this many groups, a seeded random sample.")
    titles: int | None = Field(
        default=None, ge=1,
        description="Instead of judgments: this many (title, abstract) pairs, the title as the query "
                    "(documents whose title has at least `min_title_words` words).")
    min_title_words: int = Field(default=5, ge=1)

    @property
    def label(self) -> str:
        return f"{self.dataset}:titles" if self.titles else f"{self.dataset}:{self.split}"


class Recipe(BaseModel):
    """Everything a fine-tuning run depends on; stored with the model so the run can be repeated."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(default="default", description="Cross-encoder or bi-encoder checkpoint to start from "
                                                    "(path, name under CASCADE_MODELS_DIR, hub name; "
                                                    "`default` = all-MiniLM-L6-v2).")
    data: list[DataSpec] = Field(min_length=1)
    fields: list[str] = Field(default_factory=lambda: ["title", "text"], description="Document text: these fields joined.")
    miner: str = Field(default="bm25", description="Where hard negatives come from: a retriever of the index, "
                                                   "or `fusion` for the fused first stage.")
    mine_depth: int = Field(default=30, ge=1, le=1000, description="Hard negatives are drawn from this many top hits.")
    hard_negatives: int = Field(default=2, ge=0, le=64)
    random_negatives: int = Field(default=1, ge=0, le=64)
    groups_per_step: int = Field(default=4, ge=1, le=1024)
    epochs: int = Field(default=1, ge=1, le=100)
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many steps (smoke runs).")
    learning_rate: float = Field(default=7e-5, gt=0, le=1)
    weight_decay: float = Field(default=0.01, ge=0, le=1)
    warmup: float = Field(default=0.05, ge=0, lt=1, description="Share of steps with a linear warm-up.")
    grad_clip: float = Field(default=1.0, gt=0)
    max_length: int = Field(default=192, ge=16, le=8192, description="Tokens of query + document.")
    loss: Literal["listwise"] = "listwise"
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="bfloat16: mixed precision (bf16 matmuls, float32 weights and optimizer); "
                                    "auto: bfloat16 on CPUs with native bf16 (AMX / AVX-512 BF16), else float32.")
    seed: int = 13

    @model_validator(mode="after")
    def _group_has_negatives(self) -> "Recipe":
        if self.hard_negatives + self.random_negatives < 1:
            raise ValueError("hard_negatives + random_negatives: a listwise group needs at least one negative")
        return self

    @property
    def group_size(self) -> int:
        return 1 + self.hard_negatives + self.random_negatives


def load_recipe(path: Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """A recipe YAML file; errors name the file and the key, like index configs."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "", f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "", "expected a mapping of recipe keys")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return recipe_from_dict(raw, str(path))


def recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ConfigError(source, ".".join(str(p) for p in e["loc"]), e["msg"]) from None


@dataclass
class Group:
    """One query, its relevant document first, then the negatives."""

    query: str
    docs: list[str]
    source: str
    ids: list[str]


@dataclass
class MiningStats:
    source: str
    groups: int
    candidates: int  # judged positives (or titles) available before the cap
    hard: int  # hard negatives drawn from the miner
    random: int  # random negatives (including those that filled in for missing hard ones)


def _doc_text(rec: dict[str, Any], fields: list[str]) -> str:
    return " ".join(str(rec[f]) for f in fields if rec.get(f) not in (None, ""))


def _corpus(folder: Path) -> dict[str, dict[str, Any]]:
    from cascade.datasets import corpus_file, iter_corpus

    return {rec["_id"]: rec for _, rec in iter_corpus(corpus_file(folder))}


async def _mined_ids(cascade: Any, miner: str, text: str, depth: int) -> list[str]:
    from cascade.query import Query

    q = cascade.validate(Query(text=text))
    if miner == "fusion":
        cands, _ = await cascade.candidates(q)
        return list(cands.ids[:depth])
    hits = await cascade.retrievers[miner].retrieve(q, depth)
    return [h.id for h in hits[:depth]]


def mine_groups(spec: DataSpec, recipe: Recipe, settings: Any,
                on_progress: Callable[[int, int], None] | None = None) -> tuple[list[Group], MiningStats]:
    """Training groups from one data source, hard negatives from its index's ``recipe.miner``."""
    from cascade.config import load_config
    from cascade.controller import Cascade
    from cascade.builder import open_cascade
    from cascade.datasets import load_qrels, load_queries, locate_dataset

    rng = random.Random(f"{recipe.seed}:{spec.label}")
    folder = locate_dataset(spec.dataset, settings)
    corpus = _corpus(folder)
    all_ids = sorted(corpus)
    index = spec.index or spec.dataset
    cfg = load_config(index, settings.config_dir)
    if recipe.miner != "fusion" and recipe.miner not in cfg.retrievers:
        raise CascadeError(f"miner {recipe.miner!r}: index {index!r} has retrievers "
                           f"{', '.join(cfg.retrievers)} (or use `fusion`)")
    # Mining needs the first stage only: no features, no stages (whose models may be the one being trained).
    cascade = open_cascade(cfg.model_copy(update={"stages": [], "features": None}), settings)

    # (query text, positive id, ids never to use as negatives, text fields of the positive)
    items: list[tuple[str, str, set[str], list[str]]] = []
    if spec.titles:
        text_fields = [f for f in recipe.fields if f != "title"]
        for doc_id in all_ids:
            title = str(corpus[doc_id].get("title") or "")
            if len(title.split()) >= spec.min_title_words and _doc_text(corpus[doc_id], text_fields).strip():
                items.append((title, doc_id, {doc_id}, text_fields))
        wanted = spec.titles
    else:
        queries, qrels = load_queries(folder), load_qrels(folder, spec.split)
        for qid in sorted(qrels):
            if qid not in queries:
                continue
            judged_rel = {d for d, g in qrels[qid].items() if g > 0}
            for doc_id, grade in sorted(qrels[qid].items()):
                if grade >= spec.min_grade and doc_id in corpus and _doc_text(corpus[doc_id], recipe.fields).strip():
                    items.append((queries[qid], doc_id, judged_rel, recipe.fields))
        wanted = spec.cap
    available = len(items)
    if not items:
        raise CascadeError(f"{spec.label}: no usable positives (grade >= {spec.min_grade}, non-empty text)")
    if wanted is not None and wanted < len(items):
        items = rng.sample(items, wanted)

    groups: list[Group] = []
    n_hard = n_random = 0
    mined: dict[str, list[str]] = {}

    async def run() -> None:
        nonlocal n_hard, n_random
        for k, (text, pos, excluded, pos_fields) in enumerate(items, start=1):
            if text not in mined:
                mined[text] = await _mined_ids(cascade, recipe.miner, text, recipe.mine_depth)
            pool = [d for d in mined[text] if d not in excluded and d in corpus]
            hard = rng.sample(pool, min(recipe.hard_negatives, len(pool)))
            chosen = set(hard) | excluded
            randoms: list[str] = []
            need = recipe.group_size - 1 - len(hard)
            while len(randoms) < need and len(chosen) < len(all_ids):
                d = all_ids[rng.randrange(len(all_ids))]
                if d not in chosen:
                    chosen.add(d)
                    randoms.append(d)
            # The positive's own fields decide what the negatives show, so no field gives the answer away.
            docs = [_doc_text(corpus[d], pos_fields) for d in [pos, *hard, *randoms]]
            if len(docs) == recipe.group_size and all(t.strip() for t in docs):
                groups.append(Group(text, docs, spec.label, [pos, *hard, *randoms]))
                n_hard += len(hard)
                n_random += len(randoms)
            if on_progress:
                on_progress(k, len(items))

    asyncio.run(run())
    return groups, MiningStats(spec.label, len(groups), available, n_hard, n_random)


def groups_digest(groups: list[Group]) -> str:
    h = hashlib.sha256()
    for g in groups:
        h.update(json.dumps([g.query, g.docs], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


@dataclass
class TrainResult:
    folder: Path
    steps: int
    seconds: float
    first_loss: float
    last_loss: float
    groups: int


def train_cross_encoder(recipe: Recipe, groups: list[Group], out: Path, settings: Any,
                        on_step: Callable[[int, int, float], None] | None = None,
                        stats: list[MiningStats] | None = None) -> TrainResult:
    """Fine-tune ``recipe.base`` on ``groups`` with the listwise loss and write a model folder to ``out``."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import get_linear_schedule_with_warmup

    from cascade.models.lookup import resolve_model
    from cascade.models.pair_encoding import PairEncoder
    from cascade.models.torch_ce import model_token_limit

    if not groups:
        raise CascadeError("no training groups")
    if any(len(g.docs) != recipe.group_size for g in groups):
        raise CascadeError(f"every group needs {recipe.group_size} documents (1 relevant + negatives)")
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    target, _ = resolve_model(recipe.base, settings)
    random.seed(recipe.seed)
    np.random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)  # the fresh classification head of a bi-encoder base is drawn here
    try:
        model = CrossEncoder(target, num_labels=1, max_length=recipe.max_length, device="cpu")
    except Exception as exc:
        raise CascadeError(f"base model {recipe.base!r} could not be loaded: {type(exc).__name__}: {exc}") from None
    net, tok = model.model, model.tokenizer
    if getattr(tok, "backend_tokenizer", None) is None:
        raise CascadeError(f"base model {recipe.base!r} has no fast tokenizer (tokenizer.json)")
    max_length = min(recipe.max_length, model_token_limit(tok, net.config))
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tok.model_input_names]
    encoder = PairEncoder(tok.backend_tokenizer, max_length, int(tok.pad_token_id or 0), names)

    order_rng = random.Random(recipe.seed)
    per_epoch = math.ceil(len(groups) / recipe.groups_per_step)
    total = per_epoch * recipe.epochs
    if recipe.max_steps:
        total = min(total, recipe.max_steps)
    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    params = [
        {"params": [p for n, p in net.named_parameters() if not any(x in n for x in no_decay)],
         "weight_decay": recipe.weight_decay},
        {"params": [p for n, p in net.named_parameters() if any(x in n for x in no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=recipe.learning_rate)
    sched = get_linear_schedule_with_warmup(opt, int(round(recipe.warmup * total)), total)
    from cascade.models.lookup import cpu_has_native_bf16

    bf16 = recipe.precision == "bfloat16" or (recipe.precision == "auto" and cpu_has_native_bf16())
    net.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    step = 0
    size = recipe.group_size
    while step < total:
        shuffled = list(groups)
        order_rng.shuffle(shuffled)
        for s in range(0, len(shuffled), recipe.groups_per_step):
            if step >= total:
                break
            chunk = shuffled[s: s + recipe.groups_per_step]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = _group_logits(net, encoder, chunk, torch).view(len(chunk), size)
            # Listwise: softmax over each group, the relevant document (column 0) is the target.
            loss = torch.nn.functional.cross_entropy(logits.float(), torch.zeros(len(chunk), dtype=torch.long))
            losses.append(optimizer_step(loss, net.parameters(), opt, sched, recipe.grad_clip))
            step += 1
            if on_step:
                on_step(step, total, losses[-1])
    seconds = time.perf_counter() - t0
    net.eval()

    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save(str(tmp), safe_serialization=True)
    window = max(1, min(50, len(losses) // 10 or 1))
    meta = {
        "format": FORMAT,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base": recipe.base,
        "base_resolved": target,
        "recipe": recipe.model_dump(mode="json"),
        "data": [s.__dict__ for s in (stats or [])],
        "groups": len(groups),
        "pairs": len(groups) * size,
        "groups_sha256": groups_digest(groups),
        "steps": step,
        "seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "precision": "bfloat16 (mixed)" if bf16 else "float32",
        "loss_first": float(np.mean(losses[:window])),
        "loss_last": float(np.mean(losses[-window:])),
        "loss_curve": [round(float(np.mean(losses[i: i + window])), 4) for i in range(0, len(losses), window)],
        "chance_loss": math.log(size),
    }
    (tmp / TRAINING_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return TrainResult(out, step, seconds, meta["loss_first"], meta["loss_last"], len(groups))


def _group_logits(net: Any, encoder: Any, chunk: list[Group], torch: Any) -> Any:
    """One logit per (query, document) pair of the chunk, in group order, through the serving tokenizer."""
    encodings: list[Any] = []
    for g in chunk:
        encs, ok = encoder.encode(g.query, g.docs)
        if not ok.all():
            raise CascadeError(f"a training document could not be tokenized (query {g.query[:60]!r})")
        encodings.extend(encs)
    (batch,) = encoder.batches(encodings, np.ones(len(encodings), dtype=bool), len(encodings))
    out = net(**{k: torch.from_numpy(v) for k, v in batch.inputs.items()}).logits[:, -1]
    inverse = np.empty(len(batch.index), dtype=np.int64)
    inverse[batch.index] = np.arange(len(batch.index))
    return out[torch.from_numpy(inverse)]
