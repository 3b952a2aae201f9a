"""Live pool processes per queue, from the workers' announcements (pure)."""

from __future__ import annotations

from app.broker.window import live_processes


def test_expired_announcements_do_not_count_and_queues_add_up() -> None:
    now = 1_000.0
    consumers = {
        b"w1@a|encode": b"2 1030", b"w1@a|enumerate": b"2 1030",
        b"w2@b|encode": b"8 1010", b"w3@c|encode": b"16 999",  # w3 expired
        b"odd|name@d|evaluate": b"4 1001",  # a hostname may hold "|": the queue is last
    }
    assert live_processes(consumers, now) == {"encode": 10, "enumerate": 2, "evaluate": 4}
