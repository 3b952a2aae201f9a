"""The bench's report: the machine, the numbers of one run with ratios and targets, a table."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from app.ops.bench.system import MB, RssSampler

#: Single-job latency targets (issue 16): p50 within 1.2x a bare Celery task's of the
#: same run, p99 in milliseconds. (metric path, comparison, bound)
LATENCY_TARGETS: list[tuple[str, str, float]] = [
    ("ratios.latency_p50", "<=", 1.2),
    ("latency_ms.p99", "<=", 10),
]
#: Throughput targets (issue 4) and the latency ones.
TARGETS: list[tuple[str, str, float]] = [
    ("ingestion.jobs_per_s", ">=", 50_000),
    ("ratios.ingestion", ">=", 25),
    ("end_to_end.jobs_per_s", ">=", 10_000),
    ("ratios.end_to_end", ">=", 15),
    *LATENCY_TARGETS,
]
#: Stretches of a single job's life, between the client's clock and the job's timestamps.
STAGES = ("submit_to_created", "created_to_started", "started_to_finished", "finished_to_seen")


def machine() -> dict[str, Any]:
    """What the numbers were measured on, with the load average (1, 5, 15 min) now."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            model = next((ln.split(":", 1)[1].strip() for ln in info
                          if ln.startswith("model name")), model)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}",
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}


def assemble(ours: dict[str, Any], base: dict[str, Any], rss: RssSampler,
             host: dict[str, Any], *, n: int, naive_n: int, workers: int) -> dict[str, Any]:
    """The numbers of one run, with ratios and targets."""
    from app.config import get_settings

    report: dict[str, Any] = {
        "machine": host,
        "config": {"n": n, "naive_n": naive_n, "workers": workers,
                   "worker_layout": f"1 Celery worker, prefork pool of {workers}",
                   "chunk_size": get_settings().chunk_size},
        "ingestion": ours["ingestion"], "end_to_end": ours["end_to_end"],
        "latency_ms": ours["latency_ms"], "naive_latency_ms": ours["naive_latency_ms"],
        "naive": base,
        # Whether every measured phase began after a CHECKPOINT (see settle), not only a sync.
        "checkpointed": ours["checkpointed"] and base["checkpointed"],
        "ratios": {**{k: ours[k]["jobs_per_s"] / base[k]["jobs_per_s"]
                      for k in ("ingestion", "end_to_end")},
                   **latency_ratios(ours["latency_ms"], ours["naive_latency_ms"])},
        "memory_mb": {"api_peak": rss.peak.get("api", 0) / MB,
                      "worker_peak": rss.peak.get("worker", 0) / MB,
                      "naive_worker_peak": rss.peak.get("naive_worker", 0) / MB,
                      "api_growth_over_ingestion": ours["api_growth_mb"],
                      "redis_before_upload": ours["redis_mb"]["before_upload"],
                      "redis_peak_over_batch": ours["redis_mb"]["peak_over_batch"]},
    }
    report["targets"] = [_target(report, *t) for t in TARGETS]
    return report


def latency_ratios(ours: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    """Ours divided by naive Celery's, at p50 and p99."""
    return {f"latency_{p}": ours[p] / base[p] for p in ("p50", "p99")}


def latency_report(ours: dict[str, Any], base: dict[str, Any], host: dict[str, Any], *,
                   workers: int, checkpointed: bool) -> dict[str, Any]:
    """The numbers of a latency-only run (`--latency-only`), with ratios and targets."""
    report: dict[str, Any] = {
        "machine": host, "config": {"workers": workers, "samples": ours["samples"]},
        "latency_ms": ours, "naive_latency_ms": base, "ratios": latency_ratios(ours, base),
        "checkpointed": checkpointed,
    }
    report["targets"] = [_target(report, *t) for t in LATENCY_TARGETS]
    return report


def _target(report: dict[str, Any], path: str, op: str, bound: float) -> dict[str, Any]:
    value: Any = report
    for part in path.split("."):
        value = value[part]
    met = value >= bound if op == ">=" else value <= bound
    unit = "x" if path.startswith("ratios") else ""
    return {"metric": path, "target": f"{op} {bound:,}{unit}", "value": value, "met": met}


def show(report: dict[str, Any], as_json: bool) -> None:
    """Print the report: JSON, or a rich table (120 columns wide when not on a terminal)."""
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(table(report) if "ingestion" in report else latency_table(report))


def table(r: dict[str, Any]) -> Table:
    """The report as a rich table."""
    cfg, nv, mem, m = r["config"], r["naive"], r["memory_mb"], r["machine"]
    target = _targets(r)
    t = Table(title=f"babelq bench: {cfg['n']:,} light encode jobs (naive {cfg['naive_n']:,}); "
                    f"{cfg['worker_layout']}; chunk_size {cfg['chunk_size']}",
              caption=f"{m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, {m['system']}, "
                      f"load average at start {m['load']}. Naive: one ORM commit + apply_async "
                      "per job; its ingestion timed with its workers stopped, its end to end "
                      "with them consuming. Each measured phase starts after "
                      + ("a CHECKPOINT and a sync." if r["checkpointed"] else
                         "a sync only: this database user may not run CHECKPOINT."))
    for col in ("measure", "Babel Queue", "naive", "ours/naive", "target", "met"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    for key, label in (("ingestion", "ingestion, jobs/s"), ("end_to_end", "end to end, jobs/s")):
        t.add_row(label, f"{r[key]['jobs_per_s']:,.0f}", f"{nv[key]['jobs_per_s']:,.0f}",
                  f"{r['ratios'][key]:.1f}x", *target(f"{key}.jobs_per_s", f"ratios.{key}"))
    for row in latency_rows(r, target):
        t.add_row(*row)
    t.add_row("peak RSS api, MB", f"{mem['api_peak']:.0f}", "", "", "", "")
    t.add_row("peak RSS worker + pool, MB", f"{mem['worker_peak']:.0f}",
              f"{mem['naive_worker_peak']:.0f}", "", "", "")
    t.add_row("api RSS growth over ingestion, MB", f"{mem['api_growth_over_ingestion']:.1f}",
              "", "", "", "")
    t.add_row("Redis used_memory before batch / peak over it, MB",
              f"{mem['redis_before_upload']:.1f} / {mem['redis_peak_over_batch']:.1f}",
              "", "", "", "")
    return t


def _targets(r: dict[str, Any]) -> Callable[..., tuple[str, str]]:
    """target(*metrics): the targets' text and their ticks, for a table row."""
    goal = {x["metric"]: x for x in r["targets"]}

    def target(*metrics: str) -> tuple[str, str]:
        return ("; ".join(goal[k]["target"] for k in metrics),
                " ".join("✓" if goal[k]["met"] else "✗" for k in metrics))

    return target


def latency_rows(r: dict[str, Any], target: Callable[..., tuple[str, str]]
                 ) -> list[tuple[str, ...]]:
    """Table rows of single-job latency: ours, naive Celery's, ratios, our stages."""
    lat, nv, ratio = r["latency_ms"], r["naive_latency_ms"], r["ratios"]

    def cuts(x: dict[str, Any]) -> str:
        return f"{x['p50']:.1f} / {x['p95']:.1f} / {x['p99']:.1f}"

    return [
        ("latency p50 / p95 / p99, ms", cuts(lat), cuts(nv),
         f"{ratio['latency_p50']:.2f}x / {ratio['latency_p99']:.2f}x",
         *target("ratios.latency_p50", "latency_ms.p99")),
        ("  median ms: →row →claimed →finished →seen",
         " / ".join(f"{lat['median_stages'][k]:.1f}" for k in STAGES), "", "", "", ""),
        *([("  in one request (POST ?wait)", cuts(one), "",
            f"{one['p50'] / nv['p50']:.2f}x / {one['p99'] / nv['p99']:.2f}x", "", "")]
          if (one := lat.get("one_request")) else []),
    ]


def latency_table(r: dict[str, Any]) -> Table:
    """A latency-only report as a rich table."""
    m = r["machine"]
    t = Table(title=f"babelq bench --latency-only: {r['config']['samples']} single encode jobs "
                    "each, alternating with a bare Celery task",
              caption=f"{m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, {m['system']}, "
                      f"load average at start {m['load']}. Naive: apply_async of a task that "
                      "commits one result row, polled every 1 ms.")
    for col in ("measure", "Babel Queue", "naive", "ours/naive", "target", "met"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    for row in latency_rows(r, _targets(r)):
        t.add_row(*row)
    return t
