"""Child processes of `babelq up`: started in their own sessions, watched, restarted, stopped."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

#: Seconds a child gets to exit after SIGTERM before it (and its process group) is killed.
STOP_GRACE = 20.0
#: Seconds to wait for the api and Flower to answer after they start.
READY_TIMEOUT = 90.0
#: A child that dies this many times within RESTART_WINDOW seconds stops the stack.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
#: Linux prctl option: signal a child gets when its parent dies (so `up` leaves no orphans).
PR_SET_PDEATHSIG = 1


class LaunchError(Exception):
    """The stack could not start, or a child died; the message says which and why."""


@dataclass
class Child:
    """One supervised process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: monotonic times of recent restarts, to give up on a child that keeps dying
    restarts: list[float] = field(default_factory=list)

    def tail(self, lines: int = 15) -> str:
        """The end of its log, to show why it died."""
        with suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


# Children ----------------------------------------------------------------------------


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if `up` is killed outright, its
    # children get SIGTERM instead of running on as orphans. Linux only.
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Child:
    """Start `python ARGS` in its own session, output to log_dir/NAME.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    return Child(name, _start(args, env, log, "wb"), log, args, env)


def _start(args: list[str], env: dict[str, str], log: Path, mode: str) -> subprocess.Popen[bytes]:
    with log.open(mode) as out:
        process = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    return process


def stop_children(children: list[Child], grace: float = STOP_GRACE) -> None:
    """SIGTERM every child, wait, then SIGKILL what is left of each process group."""
    for child in children:
        if child.process.poll() is None:
            with suppress(ProcessLookupError):
                child.process.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        with suppress(subprocess.TimeoutExpired):
            child.process.wait(max(deadline - time.monotonic(), 0.1))
        # Pool processes of a killed worker would otherwise linger in its group.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()


def check_alive(children: list[Child]) -> None:
    """Raise LaunchError naming the first child that has exited."""
    for child in children:
        code = child.process.poll()
        if code is not None:
            raise LaunchError(
                f"{child.name} exited unexpectedly (exit code {code}); "
                f"the end of {child.log}:\n{child.tail()}"
            )


def wait_until(url: str, children: list[Child], auth: tuple[str, str] | None = None) -> None:
    """Poll url until it answers 200, failing early if a child dies."""
    import httpx  # here, not at the top: the api and workers import this module's helpers

    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        check_alive(children)
        with suppress(httpx.HTTPError):
            if httpx.get(url, auth=auth, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise LaunchError(f"{url} did not answer 200 within {READY_TIMEOUT:.0f}s")
        time.sleep(0.2)


# Signals -----------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM both raise KeyboardInterrupt, even if SIGINT came in ignored.

    A shell starts background jobs with SIGINT ignored, and Python keeps it that way.
    """
    previous = [signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)]
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def supervise(children: list[Child], console: Console | None = None) -> int:
    """Watch the children, restarting one that dies; Ctrl-C or SIGTERM ends it from outside.

    A worker can die of a broker hiccup (a Redis restart), and nothing is lost when it
    does: its jobs' leases expire and the relay hands them out again. So a dead child is
    restarted, as a process supervisor would, unless it keeps dying (LaunchError).
    """
    while True:
        for child in children:
            if child.process.poll() is not None:
                restart(child, console or _stderr())
        time.sleep(0.5)


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def restart(child: Child, console: Console) -> None:
    """Start a dead child again, or raise LaunchError if it died too often lately."""
    now = time.monotonic()
    child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW]
    if len(child.restarts) >= MAX_RESTARTS:
        check_alive([child])
    console.print(f"[yellow]{child.name} exited (code {child.process.returncode}); "
                  f"restarting it. The end of {child.log}:[/]\n{child.tail()}")
    child.restarts.append(now)
    child.process = _start(child.args, child.env, child.log, "ab")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], timeout: float = 20) -> None:
    """SIGTERM one child, then SIGKILL if it has not exited in time; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
