import numpy as np
import pytest

from cascade.candidates import Hit
from cascade.config import LinearConfig, RRFConfig
from cascade.fusion import fuse, normalize


def results():
    return {
        "bm25": [Hit("a", 10.0), Hit("b", 8.0), Hit("c", 2.0)],
        "knn": [Hit("c", 0.9), Hit("d", 0.5), Hit("a", 0.1)],
    }


def test_rrf_matches_hand_computed_scores():
    c = fuse(results(), RRFConfig(k=60))
    expected = {"a": 1 / 61 + 1 / 63, "b": 1 / 62, "c": 1 / 63 + 1 / 61, "d": 1 / 62}
    got = dict(zip(c.ids, c.score))
    assert got == pytest.approx(expected)
    # a and c tie; ties keep first-seen order (bm25's list first), then b before d likewise.
    assert c.ids == ["a", "c", "b", "d"]


def test_rrf_weights_and_keep():
    c = fuse(results(), RRFConfig(k=0, weights={"knn": 3.0}, keep=2))
    # k=0: a = 1/1 + 3/3 = 2.0; c = 1/3 + 3/1 = 3.333; d = 3/2
    assert c.ids == ["c", "a"]
    assert c.score.tolist() == pytest.approx([1 / 3 + 3.0, 2.0])


def test_provenance_keeps_every_retriever_score_and_rank():
    c = fuse(results(), RRFConfig())
    i = c.ids.index("a")
    assert c.provenance(i) == {"bm25": {"score": 10.0, "rank": 1}, "knn": {"score": pytest.approx(0.1), "rank": 3}}
    j = c.ids.index("b")
    assert c.provenance(j) == {"bm25": {"score": 8.0, "rank": 2}}
    assert np.isnan(c.retriever_scores["knn"][j]) and c.retriever_ranks["knn"][j] == 0


def test_linear_minmax():
    c = fuse(results(), LinearConfig(normalize="minmax", weights={"bm25": 1.0, "knn": 0.5}))
    # bm25 minmax: a=1, b=0.75, c=0 ; knn minmax: c=1, d=0.5, a=0 ; missing counts 0
    expected = {"a": 1.0, "b": 0.75, "c": 0.5, "d": 0.25}
    assert dict(zip(c.ids, c.score)) == pytest.approx(expected)
    assert c.ids == ["a", "b", "c", "d"]


def test_linear_zscore_missing_gets_the_retrievers_floor():
    c = fuse(results(), LinearConfig(normalize="zscore"))
    b = np.array([10.0, 8.0, 2.0]); zb = (b - b.mean()) / b.std()
    k = np.array([0.9, 0.5, 0.1]); zk = (k - k.mean()) / k.std()
    expected = {"a": zb[0] + zk[2], "b": zb[1] + zk.min(), "c": zb[2] + zk[0], "d": zb.min() + zk[1]}
    assert dict(zip(c.ids, c.score)) == pytest.approx(expected)


def test_normalize_constant_and_empty():
    assert normalize(np.array([3.0, 3.0]), "minmax").tolist() == [1.0, 1.0]
    assert normalize(np.array([3.0, 3.0]), "zscore").tolist() == [0.0, 0.0]
    assert np.isnan(normalize(np.array([np.nan]), "minmax")).all()


def test_fuse_nothing_and_single_retriever():
    assert len(fuse({"bm25": [], "knn": []}, RRFConfig())) == 0
    c = fuse({"bm25": [Hit("x", 1.0), Hit("y", 0.5)]}, RRFConfig())
    assert c.ids == ["x", "y"]


def test_duplicate_hit_in_one_list_counts_best_rank():
    c = fuse({"bm25": [Hit("x", 2.0), Hit("x", 1.0), Hit("y", 0.5)]}, RRFConfig(k=0))
    assert dict(zip(c.ids, c.score)) == pytest.approx({"x": 1.0, "y": 1 / 3})
