"""Scale-out rehearsal: end to end with 1, 2, 4… separate `babelq worker` processes.

    python -m app.ops.bench.scaleout [--jobs 100000] [--counts 1,2,4] [--kind encode] [--json]

Each worker is its own `babelq worker -Q KIND -c 1` process, as one Kubernetes pod
runs one (pods run `-c 2`; one pool process each here keeps the count of processes
equal to the count of "pods"). For every count it uploads a batch of small jobs of the kind
with the workers running and times upload-to-last-result, then reads the CPU time
each process tree spent: the workers, PostgreSQL (the postmaster and every backend,
exited ones included), the api and the relay. CPU per job is what carries over to
bigger machines; jobs/s here depends on how busy this machine is. It starts its own
embedded PostgreSQL and Redis; it is not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from app.broker.window import PER_PROCESS
from app.ops.bench.cli import BODY_BLOCK, WARMUP_LINES, _auth, batch_done, batch_outcome
from app.ops.bench.report import machine
from app.ops.bench.system import Procs, Servers, api_args, child_env, servers, settle, wait_for
from app.ops.supervisor import free_port

err = Console(stderr=True)


#: One job line per kind, formatted with (tag, number): small params, as the bench uses.
LINES = {
    "encode": b'{"kind":"encode","params":{"text":"%s %d"}}\n',
    "enumerate": b'{"kind":"enumerate","params":{"query":"%s %d","max_results":5}}\n',
    "evaluate": (b'{"kind":"evaluate","params":{"cycles":[{"left":{"text":"proceed with the '
                 b'plan after review %s %d","confidence":0.95},"right":{"text":"proceed with '
                 b'the plan after careful review","confidence":0.9}}]}}\n'),
}


def upload(client: httpx.Client, kind: str, n: int, tag: str) -> dict[str, Any]:
    """POST n jobs of kind as one streamed NDJSON batch; the reply and when it started."""
    line, prefix = LINES[kind], tag.encode()

    def body() -> Iterator[bytes]:
        for lo in range(0, n, BODY_BLOCK):
            yield b"".join(line % (prefix, i) for i in range(lo, min(lo + BODY_BLOCK, n)))

    started = time.monotonic()
    reply = client.post("/v1/batches", content=body(), timeout=None,
                        headers={"content-type": "application/x-ndjson"})
    reply.raise_for_status()
    if reply.json()["accepted"] != n:
        raise RuntimeError(f"the api accepted {reply.json()['accepted']} of {n} lines")
    return {**reply.json(), "started": started}


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its live descendants and its reaped children."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        with suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def postgres_cpu(postmaster: int) -> dict[str, float]:
    """CPU seconds of PostgreSQL: its client sessions, and everything else (checkpointer,
    WAL writer, autovacuum; exited processes, mostly autovacuum workers, count there)."""
    sessions = 0.0
    with suppress(psutil.Error):
        for proc in psutil.Process(postmaster).children():
            with suppress(psutil.Error):
                if _is_session(proc):
                    t = proc.cpu_times()
                    sessions += t.user + t.system
    return {"sessions": sessions, "other": tree_cpu(postmaster) - sessions}


def _is_session(proc: psutil.Process) -> bool:
    """A backend serving a client: its title is `postgres: USER DB HOST STATE`."""
    title = " ".join(proc.cmdline())
    background = ("checkpointer", "background writer", "walwriter", "autovacuum",
                  "logical replication", "stats", "archiver", "io worker")
    return title.startswith("postgres: ") and not any(b in title for b in background)


def postmaster_pid(srv: Servers) -> int:
    """The embedded PostgreSQL's postmaster (first line of postmaster.pid)."""
    return int((srv.tmp / "pgdata" / "postmaster.pid").read_text().split()[0])


@dataclass
class Stack:
    """The api and relay, and a changing number of worker processes."""

    procs: Procs
    url: str
    workers: list[str]
    kind: str = "encode"

    def set_workers(self, count: int) -> None:
        """Stop every worker, then start `count` separate ones and wait until each serves."""
        if self.workers:
            self.procs.stop(*self.workers)
        self.workers = [f"worker{i}" for i in range(count)]
        for name in self.workers:
            self.procs.start(name, ["-m", "app.cli", "worker", "-Q", self.kind, "-c", "1",
                                    "--loglevel", "INFO", "-n", f"{name}@%h"])
        wait_for(self._all_ready, self.procs, timeout=120)

    def _all_ready(self) -> bool:
        logs = [c.log for c in self.procs.children if c.name in self.workers]
        return all(b" ready." in log.read_bytes() for log in logs)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the api, the relay and all workers together."""
        by_name = {c.name: c.process.pid for c in self.procs.children}
        return {"api": tree_cpu(by_name["api"]), "relay": tree_cpu(by_name["relay"]),
                "workers": sum(tree_cpu(by_name[w]) for w in self.workers)}


def run_count(client: httpx.Client, stack: Stack, srv: Servers, count: int, jobs: int
              ) -> dict[str, Any]:
    """One measured batch with `count` workers: rate and CPU per job of each part."""
    stack.set_workers(count)
    warm = upload(client, stack.kind, WARMUP_LINES, f"warm{count}")
    wait_for(lambda: batch_done(client, warm["id"]), stack.procs, timeout=300)
    settle(srv.database_url)
    pg = postmaster_pid(srv)
    before, pg_before, wal_before = stack.cpu(), postgres_cpu(pg), wal_bytes(srv)
    reply = upload(client, stack.kind, jobs, f"scale{count}")
    done = wait_for(lambda: batch_done(client, reply["id"]), stack.procs, timeout=1800)
    after, pg_after, wal_after = stack.cpu(), postgres_cpu(pg), wal_bytes(srv)
    outcome = batch_outcome(srv.database_url, reply["id"])
    if outcome["results"] != jobs:
        raise RuntimeError(f"{jobs - outcome['results']} jobs ended without a result")
    seconds = done - reply["started"]
    per_job = {k: (after[k] - before[k]) / jobs * 1e6 for k in after}
    per_job |= {f"postgres_{k}": (pg_after[k] - pg_before[k]) / jobs * 1e6 for k in pg_after}
    per_job["postgres"] = per_job["postgres_sessions"] + per_job["postgres_other"]
    return {"kind": stack.kind, "workers": count, "jobs": jobs, "seconds": seconds,
            "jobs_per_s": jobs / seconds,
            "cpu_us_per_job": per_job,
            "wal_bytes_per_job": (wal_after - wal_before) / jobs,
            "connections": connections(srv), "load": os.getloadavg()[0]}


def wal_bytes(srv: Servers) -> int:
    """PostgreSQL's WAL position: bytes of WAL written since the cluster began."""
    return int(_scalar(srv, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))


def connections(srv: Servers) -> int:
    """Sessions open on the bench's database now (api, relay, workers and their pools)."""
    return int(_scalar(srv, "SELECT count(*) FROM pg_stat_activity "
                            "WHERE datname = current_database()"))


def _scalar(srv: Servers, sql: str) -> Any:
    from sqlalchemy import text

    from app.store.db import engine_for

    with engine_for(srv.database_url).connect() as conn:
        return conn.execute(text(sql)).scalar_one()


def rehearse(jobs: int, counts: list[int], kind: str = "encode") -> dict[str, Any]:
    """Every count in one run, on the same embedded servers."""
    at_start = machine()
    with servers(None, None) as srv:
        # Each lane's window follows the live pool processes (app.broker.window.CONSUMERS).
        procs = Procs(child_env(srv), srv.tmp / "logs")
        try:
            port = free_port()
            procs.start("api", api_args(port))
            procs.start("relay", ["-m", "app.cli", "relay"])
            url = f"http://127.0.0.1:{port}"
            procs.wait_ready(f"{url}/ready")
            stack = Stack(procs, url, [], kind)
            with httpx.Client(base_url=url, headers=_auth(srv), timeout=60) as client:
                rows = []
                for count in counts:
                    err.print(f"{count} worker process(es): {jobs:,} {kind} jobs")
                    rows.append(run_count(client, stack, srv, count, jobs))
        finally:
            procs.stop()
    return {"machine": at_start, "kind": kind, "rows": rows,
            "dispatch_window": f"{PER_PROCESS} per live pool process (at least the setting)"}


def show(report: dict[str, Any]) -> None:
    """The scaling table."""
    table = Table(title=f"{report['kind']} scale-out on {report['machine']['cpus']} CPUs "
                        f"({report['machine']['cpu']}), load at start {report['machine']['load']}")
    for column in ("workers", "jobs/s", "x of 1", "µs CPU/job: workers", "PostgreSQL",
                   "(its sessions)", "api", "relay", "WAL B/job", "PG sessions",
                   "load (1 min)"):
        table.add_column(column, justify="right")
    first = report["rows"][0]["jobs_per_s"]
    for row in report["rows"]:
        cpu = row["cpu_us_per_job"]
        table.add_row(str(row["workers"]), f"{row['jobs_per_s']:,.0f}",
                      f"{row['jobs_per_s'] / first:.2f}", f"{cpu['workers']:.1f}",
                      f"{cpu['postgres']:.1f}", f"{cpu['postgres_sessions']:.1f}",
                      f"{cpu['api']:.1f}", f"{cpu['relay']:.1f}",
                      f"{row['wal_bytes_per_job']:,.0f}", str(row["connections"]),
                      f"{row['load']:.1f}")
    Console(width=140).print(table)


def main() -> None:
    """Parse the options, run, print the table (or JSON)."""
    parser = argparse.ArgumentParser(prog="python -m app.ops.bench.scaleout",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs per worker count")
    parser.add_argument("--counts", default="1,2,4", help="worker process counts, e.g. 1,2,4")
    parser.add_argument("--kind", choices=sorted(LINES), default="encode", help="job kind")
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    parser.add_argument("--save", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    report = rehearse(args.jobs, [int(c) for c in args.counts.split(",")], args.kind)
    if args.save:
        args.save.write_text(json.dumps(report, indent=2))
    if args.json:
        Console().print_json(json.dumps(report))
    else:
        show(report)


if __name__ == "__main__":
    main()
