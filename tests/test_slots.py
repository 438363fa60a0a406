"""Slot budget: limits, FIFO order, busy refusals, hold-down and cancellation consistency."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from campatrol.errors import CaptureBusy
from campatrol.slots import SlotBudget
from campatrol.supervisor import Supervisor

pytestmark = pytest.mark.timeout(10)


def budget_with(camera_id: str, max_sessions: int) -> SlotBudget:
    budget = SlotBudget()
    budget.configure(camera_id, max_sessions)
    return budget


async def start_waiter(budget: SlotBudget, camera_id: str, order: list[str], name: str):
    """Start a task that takes a lease, notes `name` in `order`, and releases at once."""

    async def take() -> None:
        async with budget.lease(camera_id, timeout=5):
            order.append(name)

    task = asyncio.create_task(take())
    await asyncio.sleep(0)  # let it queue before the next one
    return task


async def test_leases_beyond_max_sessions_are_refused_as_busy():
    budget = budget_with("cam", 2)
    async with budget.lease("cam", timeout=1), budget.lease("cam", timeout=1):
        assert budget.in_use("cam") == 2
        with pytest.raises(CaptureBusy, match=r"camera cam: no free slot within 0\.1s"):
            async with budget.lease("cam", timeout=0.1):
                pytest.fail("a third lease must not be granted")

    assert budget.in_use("cam") == 0
    assert (budget.counters.granted, budget.counters.waits, budget.counters.busy) == (2, 1, 1)
    assert CaptureBusy.failure_class == "busy"


async def test_busy_lease_starts_no_process():
    budget = budget_with("cam", 1)
    async with Supervisor(max_processes=4) as sup, budget.lease("cam", timeout=1):
        with pytest.raises(CaptureBusy):
            async with budget.lease("cam", timeout=0.05):
                await sup.run(["true"], deadline=5, purpose="capture", camera_id="cam")

    assert sup.counters.spawned == 0


async def test_waiters_get_slots_in_arrival_order():
    budget = budget_with("cam", 1)
    order: list[str] = []
    async with budget.lease("cam", timeout=1):
        tasks = [await start_waiter(budget, "cam", order, name) for name in "abcd"]
        assert budget.waiting("cam") == 4

    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c", "d"]
    assert budget.in_use("cam") == 0
    assert budget.waiting("cam") == 0


async def test_newcomer_does_not_overtake_a_waiter():
    budget = budget_with("cam", 1)
    order: list[str] = []
    async with budget.lease("cam", timeout=1):
        waiter = await start_waiter(budget, "cam", order, "waiter")
    # The slot went to the waiter on release, even though it has not run yet.
    with pytest.raises(CaptureBusy):
        async with budget.lease("cam", timeout=0):
            order.append("newcomer")
    await waiter
    assert order == ["waiter"]


async def test_hold_down_keeps_the_slot_after_release():
    budget = budget_with("cam", 1)
    async with budget.lease("cam", timeout=1) as lease:
        lease.hold_down(0.3)

    assert budget.in_use("cam") == 1
    with pytest.raises(CaptureBusy):
        async with budget.lease("cam", timeout=0.05):
            pass
    loop = asyncio.get_running_loop()
    asked = loop.time()
    async with budget.lease("cam", timeout=2):
        waited = loop.time() - asked
    assert waited >= 0.2  # the hold (0.3 s from release) minus the busy attempt above
    assert budget.in_use("cam") == 0


async def test_cancelled_waiter_leaves_the_budget_consistent():
    budget = budget_with("cam", 1)
    async with budget.lease("cam", timeout=1):
        task = await start_waiter(budget, "cam", [], "cancelled")
        assert budget.waiting("cam") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert budget.waiting("cam") == 0

    assert budget.in_use("cam") == 0
    async with budget.lease("cam", timeout=0):
        assert budget.in_use("cam") == 1


async def test_slot_granted_to_a_waiter_cancelled_in_the_same_step_is_handed_on():
    budget = budget_with("cam", 1)
    order: list[str] = []
    lease_cm = budget.lease("cam", timeout=1)
    await lease_cm.__aenter__()
    doomed = await start_waiter(budget, "cam", order, "doomed")
    nxt = await start_waiter(budget, "cam", order, "next")

    await lease_cm.__aexit__(None, None, None)  # grants the slot to `doomed`...
    doomed.cancel()  # ...which is cancelled before it could run
    with contextlib.suppress(asyncio.CancelledError):
        await doomed

    await nxt
    assert order == ["next"]
    assert budget.in_use("cam") == 0


async def test_raising_max_sessions_wakes_waiters():
    budget = budget_with("cam", 1)
    order: list[str] = []
    async with budget.lease("cam", timeout=1):
        task = await start_waiter(budget, "cam", order, "woken")
        budget.configure("cam", 2)
        await task
    assert order == ["woken"]


async def test_unconfigured_camera_is_an_error():
    with pytest.raises(ValueError, match="camera ghost: no slot budget configured"):
        async with SlotBudget().lease("ghost", timeout=1):
            pass
