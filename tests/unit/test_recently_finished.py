"""Jobs announced whole are kept by the api for a few seconds, and no more of them than MAX."""

from __future__ import annotations

from app.api.waiters import RecentlyFinished


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_an_announced_job_is_kept_for_a_few_seconds() -> None:
    clock = Clock()
    recent = RecentlyFinished(clock)
    recent.add({"id": 7, "status": "succeeded"})
    assert recent.get(7) == {"id": 7, "status": "succeeded"} and recent.get(8) is None
    clock.now += RecentlyFinished.SECONDS
    assert recent.get(7) is None


def test_the_oldest_go_first_beyond_the_bound() -> None:
    recent = RecentlyFinished(Clock())
    for job_id in range(RecentlyFinished.MAX + 1):
        recent.add({"id": job_id})
    assert recent.get(0) is None
    assert recent.get(1) == {"id": 1} and recent.get(RecentlyFinished.MAX) is not None


def test_a_job_announced_by_id_is_known_announced_but_not_whole() -> None:
    """A waiter that knows a job as just submitted reads it only if it was announced."""
    clock = Clock()
    recent = RecentlyFinished(clock)
    recent.mark(9)
    recent.add({"id": 7, "status": "succeeded"})
    assert recent.announced(9) and recent.get(9) is None
    assert recent.announced(7) and not recent.announced(8)
    clock.now += RecentlyFinished.SECONDS
    assert not recent.announced(9) and not recent.announced(7)


def test_ids_alone_are_bounded_too() -> None:
    recent = RecentlyFinished(Clock())
    for job_id in range(RecentlyFinished.MAX_IDS + 1):
        recent.mark(job_id)
    assert not recent.announced(0) and recent.announced(RecentlyFinished.MAX_IDS)
