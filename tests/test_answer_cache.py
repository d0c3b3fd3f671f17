"""The answer cache's group writer: answers that come back together share one commit, each caller
returns only once its own answer is committed, and a failed write reaches every caller it held."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from autoannotator.run.cache import Answer, AnswerCache, GroupWriter


def _answer(i: int, run: str = "r1") -> Answer:
    return Answer(f"k{i}", "m", "positive", 10, 1, False, run)


def test_put_many_stores_all_and_reports_duplicates(tmp_path):
    cache = AnswerCache(tmp_path / "c.sqlite")
    assert cache.put(*_answer(1, "earlier")) is True
    assert cache.put_many([_answer(1), _answer(2), _answer(2)]) == [False, True, False]
    assert cache.get_many(["k1", "k2"]) == {"k1": ("positive", "earlier"), "k2": ("positive", "r1")}
    assert len(cache.requests()) == 4  # every answered request is logged, duplicates too


def test_answers_arriving_together_share_a_commit_and_each_waits_for_its_own(tmp_path):
    cache = AnswerCache(tmp_path / "c.sqlite")
    batches: list[int] = []
    gate = threading.Event()
    real = cache.put_many

    def slow_put_many(answers):
        batches.append(len(answers))
        if len(batches) == 1:
            gate.wait(5)  # the first write is under way while 9 more answers arrive
        return real(answers)

    cache.put_many = slow_put_many  # type: ignore[method-assign]

    async def go():
        writer = GroupWriter(cache)
        first = asyncio.ensure_future(writer.put(_answer(0)))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(writer.put(_answer(i))) for i in range(1, 10)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in [first, *rest])  # nothing returns before its commit
        committed_before = set(cache.get_many([f"k{i}" for i in range(10)]))
        gate.set()
        return await asyncio.gather(first, *rest), committed_before

    results, committed_before = asyncio.run(go())
    assert results == [True] * 10
    assert committed_before == set()
    assert batches == [1, 9]
    assert len(cache.get_many([f"k{i}" for i in range(10)])) == 10


def test_a_failed_write_reaches_every_caller_of_its_batch(tmp_path):
    cache = AnswerCache(tmp_path / "c.sqlite")

    def broken(answers):
        raise sqlite3.OperationalError("disk I/O error")

    cache.put_many = broken  # type: ignore[method-assign]

    async def go():
        writer = GroupWriter(cache)
        return await asyncio.gather(*(writer.put(_answer(i)) for i in range(3)), return_exceptions=True)

    out = asyncio.run(go())
    assert all(isinstance(e, sqlite3.OperationalError) for e in out)


def test_a_cancelled_caller_does_not_cancel_the_write(tmp_path):
    cache = AnswerCache(tmp_path / "c.sqlite")

    async def go():
        writer = GroupWriter(cache)
        task = asyncio.ensure_future(writer.put(_answer(7)))
        await asyncio.sleep(0)  # the write has started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)

    asyncio.run(go())
    assert cache.get_many(["k7"]) == {"k7": ("positive", "r1")}
