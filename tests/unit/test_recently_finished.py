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
