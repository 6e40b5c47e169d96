"""Stopping a loop whose first cancel is lost, as Python 3.11's ``wait_for`` can lose one."""

from __future__ import annotations

import asyncio

import pytest

from trainyard_shared.tasks import cancel_and_wait

pytestmark = pytest.mark.unit


async def loop_that_loses_cancels(lost: int, rounds: list[int]) -> None:
    """Goes on after its first ``lost`` cancels, as a loop does when a cancel lands in
    ``wait_for`` just as a NATS answer arrives (the answer is returned, the cancel dropped)."""
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if lost == 0:
                raise
            lost -= 1
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        rounds.append(1)


async def test_one_cancel_is_not_enough_for_such_a_loop():
    rounds: list[int] = []
    task = asyncio.create_task(loop_that_loses_cancels(1, rounds))
    await asyncio.sleep(0.02)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.5)
    assert not done  # what hung the workflow's shutdown in CI
    assert await cancel_and_wait(task, timeout=5)


async def test_a_loop_that_loses_several_cancels_still_ends():
    task = asyncio.create_task(loop_that_loses_cancels(3, []))
    await asyncio.sleep(0.02)
    assert await cancel_and_wait(task, timeout=5)
    assert task.cancelled()


async def test_a_task_that_ignores_every_cancel_is_reported_not_waited_on_forever():
    stop = asyncio.Event()

    async def stubborn() -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0.02)  # inside its loop: a task cancelled before its first step just ends
    assert not await cancel_and_wait(task, timeout=0.3)
    stop.set()
    await task


async def test_a_finished_task_or_none_is_already_stopped():
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    assert await cancel_and_wait(task) and await cancel_and_wait(None)
