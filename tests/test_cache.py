"""The caches against a real redis-server process: TTLs, fail-open, recovery; the LRU; single-flight; pair scores.

Redis is stopped, restarted and paused (SIGSTOP) for real; nothing here mocks
it. Timeouts are short so a dead Redis costs milliseconds, and every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from cascade.service.concurrency import Admission, Overloaded, SingleFlight
from connectors.cache import LRU, MemoryCache, RedisCache
from cascade.models.scorers import CachedPairScorer, Threaded
from connectors.score_cache import MemoryPairStore, RedisPairStore
from tests.service_fixtures import CountingScorer, free_port, redis_server  # noqa: F401


def errors_hook():
    seen: list[tuple[str, str]] = []
    return seen, lambda op, exc: seen.append((op, type(exc).__name__))


async def test_redis_cache_round_trip_and_ttl(redis_server):
    cache = RedisCache(redis_server.url, timeout_s=0.2, retry_s=0.2)
    try:
        assert await cache.ping()
        assert await cache.get("k") is None
        await cache.set("k", b'{"hits":[]}', ttl_s=0.3)
        assert await cache.get("k") == b'{"hits":[]}'
        assert 0 < redis_server.client().pttl("k") <= 300
        await asyncio.sleep(0.45)
        assert await cache.get("k") is None  # expired in Redis itself
        assert cache.status()["state"] == "up" and cache.errors == 0
    finally:
        await cache.close()


async def test_redis_down_is_a_fast_miss_and_caching_resumes(redis_server):
    seen, hook = errors_hook()
    cache = RedisCache(redis_server.url, timeout_s=0.1, retry_s=0.3, on_error=hook)
    try:
        await cache.set("k", b"v", 60)
        assert await cache.get("k") == b"v"
        redis_server.stop()
        t = time.perf_counter()
        assert await cache.get("k") is None
        await cache.set("k2", b"v2", 60)
        assert await cache.get("k2") is None
        assert time.perf_counter() - t < 1.0
        assert seen[0][0] == "get" and cache.errors == 1  # then the breaker skips Redis without trying it
        assert {op for op, _ in seen[1:]} <= {"get_skipped", "set_skipped"} and len(seen) == 3
        assert cache.status()["state"] == "down" and "last_error" in cache.status()

        redis_server.start()  # the same port, an empty server
        await asyncio.sleep(0.35)  # the breaker's retry window
        assert await cache.get("k") is None  # a miss (the data went with the old server), but no error
        await cache.set("k", b"again", 60)
        assert await cache.get("k") == b"again" and cache.status()["state"] == "up"
    finally:
        await cache.close()


async def test_paused_redis_times_out_instead_of_hanging(redis_server):
    cache = RedisCache(redis_server.url, timeout_s=0.1, retry_s=5)
    try:
        await cache.set("k", b"v", 60)
        redis_server.pause()
        t = time.perf_counter()
        assert await cache.get("k") is None
        assert time.perf_counter() - t < 0.5  # the socket timeout, not the server, decides
        redis_server.resume()
        assert await cache.ping() and await cache.get("k") == b"v"  # ping closes the breaker
    finally:
        await cache.close()


async def test_no_server_at_all_fails_open():
    seen, hook = errors_hook()
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.1, retry_s=60, on_error=hook)
    try:
        t = time.perf_counter()
        assert await cache.get("x") is None and not await cache.ping()
        assert time.perf_counter() - t < 1.0 and seen and seen[0][1] in ("ConnectionError", "TimeoutError")
    finally:
        await cache.close()


async def test_memory_cache_lru_and_ttl():
    lru = LRU(max_items=2)
    lru.set("a", b"1", 10, now=0)
    lru.set("b", b"2", 10, now=0)
    assert lru.get("a", now=1) == b"1"  # a is now the most recent
    lru.set("c", b"3", 10, now=1)
    assert lru.get("b", now=1) is None and lru.get("a", now=1) == b"1" and lru.get("c", now=1) == b"3"
    assert lru.get("a", now=10.5) is None and len(lru) == 1  # expired entries go on read
    cache = MemoryCache(max_items=10)
    await cache.set("k", b"v", 0.05)
    assert await cache.get("k") == b"v"
    await asyncio.sleep(0.08)
    assert await cache.get("k") is None
    assert (await cache.ping()) and cache.status()["backend"] == "memory"
    assert MemoryCache(max_items=0).lru.get("k") is None


async def test_single_flight_shares_results_and_errors():
    sf: SingleFlight = SingleFlight()
    calls = 0

    async def work():
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return calls

    results = await asyncio.gather(*(sf.do("k", work) for _ in range(5)))
    assert calls == 1 and [r for r, _ in results] == [1] * 5 and sum(s for _, s in results) == 4
    assert len(sf) == 0 and (await sf.do("k", work))[0] == 2  # finished flights are forgotten

    async def boom():
        await asyncio.sleep(0.01)
        raise ValueError("bad")

    outs = await asyncio.gather(*(sf.do("e", boom) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outs)

    # A waiter that gives up does not cancel the computation for the others.
    async def slow():
        await asyncio.sleep(0.2)
        return "done"

    first = asyncio.create_task(sf.do("s", slow, timeout_s=0.05))
    second = asyncio.create_task(sf.do("s", slow))
    with pytest.raises(asyncio.TimeoutError):
        await first
    assert (await second) == ("done", True)


async def test_admission_bounds_running_and_waiting():
    adm = Admission(limit=1, queue=1)
    gate = asyncio.Event()

    async def hold():
        async with adm.slot():
            await gate.wait()

    a = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    b = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    assert adm.running == 1 and adm.waiting == 1
    with pytest.raises(Overloaded, match="1 searches running and 1 waiting"):
        async with adm.slot():
            pass
    gate.set()
    await asyncio.gather(a, b)
    assert adm.running == 0 and adm.waiting == 0


async def test_admission_sheds_a_search_whose_expected_wait_is_longer_than_it_can_wait():
    """Regression: 64 uncached clients all queued for ~18.5 s (none got a 503) with the default limits."""
    adm = Admission(limit=2, queue=100, max_wait_s=1.0)
    gate = asyncio.Event()

    async def hold(deadline_s=None):
        async with adm.slot(deadline_s):
            await gate.wait()

    held = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0.01)
    for _ in range(6):  # nothing is known about how long a search takes yet: only the queue bound applies
        held.append(asyncio.create_task(hold()))
    await asyncio.sleep(0.01)
    assert adm.running == 2 and adm.waiting == 6 and adm.expected_wait_s() == 0.0
    adm.hold_s = 0.5  # as if recent searches held a slot half a second
    assert adm.expected_wait_s() == (6 + 1) / 2 * 0.5
    with pytest.raises(Overloaded, match=r"expected wait for a search slot is 1\.8 s .* longer than the 1\.0 s") as e:
        async with adm.slot():
            pass
    assert e.value.retry_after in ("2", "3")  # 1.75 s, spread by up to half again
    gate.set()
    await asyncio.gather(*held)
    assert adm.running == adm.waiting == 0 and adm.hold_s is not None

    # Queue of 0..3 ahead on two slots at 0.5 s each: waits 0.25, 0.5, 0.75, 1.0 s are taken, 1.25 s is not.
    adm, gate = Admission(limit=2, queue=100, max_wait_s=1.0), asyncio.Event()
    adm.hold_s = 0.5
    held = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0.01)
    for _ in range(4):
        held.append(asyncio.create_task(hold()))
        await asyncio.sleep(0.01)
    assert adm.waiting == 4
    with pytest.raises(Overloaded):
        async with adm.slot():
            pass
    # A request's own deadline (its budget) is tighter than max_wait_s.
    with pytest.raises(Overloaded, match="longer than the 0.2 s"):
        async with adm.slot(deadline_s=0.2):
            pass
    gate.set()
    await asyncio.gather(*held)
    async with adm.slot(deadline_s=0.001) as waited:  # a free slot: no wait, never shed
        assert waited < 0.1


async def test_admission_counts_a_waking_waiter_as_occupying_its_slot():
    """Regression (found by the overload benchmark): right after a release, running was limit - 1 while
    others still waited, and an arrival in that moment skipped both the queue bound and the wait check."""
    adm = Admission(limit=2, queue=3, max_wait_s=10.0)
    adm.running, adm.waiting, adm.interval_s = 1, 3, 0.5  # one slot just released, its waiter not yet running
    assert adm.ahead() == 3 and adm.expected_wait_s() == 1.5
    with pytest.raises(Overloaded, match="1 searches running and 3 waiting"):
        async with adm.slot():
            pass


async def test_admission_learns_the_interval_between_finishing_searches_under_load():
    adm = Admission(limit=1, queue=10, max_wait_s=None)

    async def hold():
        async with adm.slot():
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(hold()) for _ in range(4)]
    await asyncio.gather(*tasks)
    assert adm.interval_s is not None and 0.04 <= adm.interval_s <= 0.2  # one finish every ~50 ms


async def test_pair_scores_come_from_redis_the_second_time(redis_server):
    inner = CountingScorer(stamp="m1")
    store = RedisPairStore(redis_server.url, timeout_s=0.2, retry_s=0.2)
    lookups: list[tuple[int, int]] = []
    scorer = CachedPairScorer(Threaded(inner), store, ttl_s=60, on_lookup=lambda h, m: lookups.append((h, m)))
    docs = ["alpha doc", "beta document", "gamma"]
    first = await scorer.score("q", docs)
    assert inner.pairs == 3 and np.allclose(first, inner.score("q", docs)) and lookups == [(0, 3)]
    inner.pairs = 0
    again = await scorer.score("q", docs + ["delta"])
    assert inner.pairs == 1 and np.allclose(again[:3], first) and lookups[-1] == (3, 1)
    assert scorer.name == inner.name and scorer.stamp == "m1"
    # Another model stamp (a retrained model) or another query never reuses these scores.
    other_model = CountingScorer(stamp="m2")
    await CachedPairScorer(Threaded(other_model), store, ttl_s=60).score("q", docs)
    await scorer.score("q2", docs)
    assert other_model.pairs == 3 and inner.pairs == 1 + 3
    keys = redis_server.client().keys("cascade:pair:*")
    assert len(keys) == 4 + 3 + 3 and 0 < redis_server.client().pttl(keys[0]) <= 60_000

    redis_server.stop()  # the model scores everything itself, and nothing raises
    inner.pairs = 0
    t = time.perf_counter()
    assert np.allclose(await scorer.score("q", docs), first) and inner.pairs == 3
    assert time.perf_counter() - t < 1.0
    await store.close()


async def test_pair_scores_in_memory_without_redis():
    inner = CountingScorer()
    scorer = CachedPairScorer(Threaded(inner), MemoryPairStore(100), ttl_s=60)
    assert (await scorer.score("q", [])).shape == (0,)
    await scorer.score("q", ["a", "b"])
    await scorer.score("q", ["b", "a"])
    assert inner.pairs == 2


async def test_fallback_is_computed_over_the_whole_window_and_never_cached():
    """Regression: the fallback (lowest score - 1) was computed over the cache misses alone, so an empty
    document could outrank cached, properly scored ones, and that fallback was then cached."""
    from cascade.candidates import Candidates
    from cascade.query import Query
    from cascade.stages.cross_encoder import CrossEncoderConfig, CrossEncoderStage

    inner = CountingScorer()
    store = MemoryPairStore(100)
    stage = CrossEncoderStage(CrossEncoderConfig(model="m", fields=["text"]),
                              CachedPairScorer(Threaded(inner), store, ttl_s=60))
    low, high = "x" * 3, "y" * 90  # CountingScorer scores len % 97: 3 and 90
    await stage.scorer.score("q", [low, high])  # both cached now
    docs = [{"text": low}, {"text": high}, {"text": ""}]
    c = Candidates(ids=["low", "high", "empty"], fields=docs, score=np.array([3.0, 2.0, 1.0]))
    out = await stage(Query("q"), c, None)
    assert inner.pairs == 2  # the two known pairs came from the cache, the empty one is never sent
    assert out.ids == ["high", "low", "empty"]  # the empty document is last, below the cached scores
    assert out.stage_scores["cross_encoder"][2] == pytest.approx(3 + len("q") / 100 - 1)
    assert len(store.lru) == 2  # the fallback was not cached


def test_real_cross_encoder_stage_scores_through_its_composed_cache(models_dir, tmp_path):
    """The builder composes the pair cache in front of the real cross-encoder at build time (nothing rewraps a
    built stage), and a model retrained in place gets new cache keys and is loaded again."""
    import shutil

    from cascade.stages.base import BuildContext
    from cascade.stages.cross_encoder import CrossEncoderConfig
    from tests.conftest import tiny_config
    from tests.service_fixtures import make_settings

    model = tmp_path / "ce"
    shutil.copytree(models_dir / "minilm-l6-ce-v1", model)
    settings = make_settings(tmp_path, tmp_path / "idx")
    store = MemoryPairStore(100)
    cfg = CrossEncoderConfig(model=str(model), max_length=64)
    ce = cfg.build(BuildContext(settings, tiny_config(), pair_store=store))
    assert isinstance(ce.scorer, CachedPairScorer) and ce.describe()["model"].endswith("ce")
    docs = ["Cholesterol raises the risk of heart disease.", "Fish live in the deep sea."]
    first = asyncio.run(ce.scorer.score("cholesterol heart", docs))
    assert first[0] > first[1] and np.allclose(asyncio.run(ce.scorer.score("cholesterol heart", docs)), first)
    # Retrained in place: new files, same path. The loaded model and the cache keys must both change.
    weights = next(p for p in model.iterdir() if p.suffix in (".safetensors", ".bin"))
    weights.write_bytes(weights.read_bytes())
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = cfg.build(BuildContext(settings, tiny_config(), pair_store=store))
    assert again.model_stamp() != ce.model_stamp()
    assert again.scorer.inner.runtime.model is not ce.scorer.inner.runtime.model  # loaded again, not cached by path
    assert again.scorer.key("q", "d") != ce.scorer.key("q", "d")


async def test_admission_recovers_from_a_slow_spell():
    """Regression (review): an interval learned while searches were slow, above max_wait_s, shed every
    request that found the slots busy, so no search finished with others waiting and it never moved again."""
    adm = Admission(limit=1, queue=10, max_wait_s=1.0)
    adm.interval_s = adm.hold_s = 1.5  # as after a slow spell
    shed = 0
    for _ in range(40):  # searches are fast now, two at a time

        async def one():
            nonlocal shed
            try:
                async with adm.slot():
                    await asyncio.sleep(0.005)
            except Overloaded:
                shed += 1

        await asyncio.gather(one(), one())
    assert adm.interval_s < 0.1 and shed < 20
