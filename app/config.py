"""The one place settings come from: environment (prefix BABELQ_) and .babelq/credentials.json."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Values that must never be used as secrets in production.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "admin", "password", "secret", "babelq", "postgres", "redis"}
)

#: Shortest Flower password accepted in production.
MIN_FLOWER_PASSWORD = 12


class Settings(BaseSettings):
    """Every tunable of Babel Queue; nothing else reads os.environ."""

    model_config = SettingsConfigDict(env_prefix="BABELQ_", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    #: Where `babelq up` keeps embedded server data and credentials.json.
    home: Path = Path(".babelq")
    database_url: str | None = None
    #: redis://host:6379/0, or Sentinel: sentinel://host1:26379;sentinel://host2:26379
    redis_url: str | None = None
    #: The master's name at the sentinels, when redis_url lists sentinel:// entries.
    redis_sentinel_master: str = "mymaster"
    #: The sentinels' own password (their requirepass), if any; the master's is in the URL.
    redis_sentinel_password: str | None = None

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    #: Base URL and key the CLI and client use to reach the api.
    api_url: str | None = None
    api_key: str | None = None

    #: How every process writes its log: JSON objects one a line, or lines for a console.
    log_format: Literal["json", "console"] = "console"
    #: Send OpenTelemetry traces (submission, api request, worker chunk, job outcome) to
    #: an OTLP/HTTP endpoint; off by default.
    tracing: bool = False
    #: Where traces go when tracing is on (the OTLP exporter's default when unset).
    otlp_endpoint: str | None = None
    #: A file the worker (every 5 s) and the relay (every pass) touch while their main
    #: loop turns, for a liveness probe on its age (app.observe.alive); off when unset.
    alive_file: Path | None = None

    flower_host: str = "127.0.0.1"
    flower_port: int = 5555
    flower_user: str | None = None
    flower_password: str | None = None

    # Delivery: see docs/design.md "Where the truth lives".
    #: Seconds a claimed job's lease lasts. A running worker renews it every third of it,
    #: so it bounds how long a dead worker's jobs wait before they run again, not how long
    #: a job may take. It also cuts off an inline chunk that hangs (see jobs.take).
    lease_seconds: float = Field(15.0, gt=0)
    #: Seconds a queued job may wait unstarted before the relay republishes it.
    requeue_after: float = 30.0
    #: Seconds between relay passes.
    relay_interval: float = 1.0
    #: Redis visibility timeout; above the longest chunk, and above the lease. It is how an
    #: inline chunk of a killed worker comes back under a backlog (see workers.tasks), so
    #: not much above: a chunk still running when it ends is redelivered as a no-op.
    visibility_timeout: int = 300
    worker_max_tasks_per_child: int = 10_000
    default_max_attempts: int = Field(3, ge=1, le=20)
    retry_backoff_base: float = 2.0
    retry_backoff_max: float = 600.0
    #: Jobs per broker message for batches.
    chunk_size: int = Field(500, ge=1, le=10_000)
    #: Seconds of work one message should hold: chunks of slow kinds get fewer jobs
    #: (measured run time per job, per kind), never more than chunk_size.
    chunk_seconds: float = Field(0.25, gt=0)
    #: Messages waiting in Redis per lane (kind and priority) at least; the rest waits in
    #: PostgreSQL. A lane holds more with more workers: two per live pool process consuming
    #: its queue (workers announce their pools, app.broker.window.CONSUMERS). A worker refills
    #: it as it finishes a chunk; single jobs go straight to a lane shorter than this.
    dispatch_window: int = Field(4, ge=1, le=1000)
    #: Modules (comma separated) that register extra job kinds (app/jobs/kinds.py); the
    #: test suite's test_fail and test_sleep come this way. Refused in production.
    plugins: str = ""
    #: Days finished jobs are kept before the relay prunes them; 0 keeps them forever.
    retention_days: int = 0

    # Limits (see docs/design.md "Sharing between tenants" and app/jobs/admission.py).
    max_batch_lines: int = Field(1_000_000, ge=1)
    #: Largest request body, except uploads to /v1/batches (413 beyond).
    max_body_bytes: int = Field(1_048_576, ge=1)
    max_batch_body_bytes: int = Field(1_073_741_824, ge=1)
    #: Largest JSON batch ({"jobs": [...]}): bigger uploads go as NDJSON (413 beyond).
    max_json_batch_bytes: int = Field(10_485_760, ge=1)
    #: Bytes of lines an upload hands to PostgreSQL at a time (with at most 5,000 lines):
    #: what bounds an upload's memory when its lines are long.
    ingest_block_bytes: int = Field(2_097_152, ge=1)
    #: Seconds a request body may take to deliver each block of an upload, or a JSON body
    #: whole (408 beyond): a client that trickles its body holds a transaction no longer.
    body_timeout: float = Field(30.0, gt=0)
    #: Long-polls (GET or POST /v1/jobs ?wait) one tenant may hold open in one api process;
    #: beyond it a ?wait is answered at once, as without it. 0: no limit.
    max_long_polls_per_tenant: int = Field(1000, ge=0)
    #: Database connections each process keeps, may add under load, and waits for when all
    #: are taken (then the api answers 503 with Retry-After).
    db_pool_size: int = Field(10, ge=1)
    db_max_overflow: int = Field(20, ge=0)
    db_pool_timeout: float = Field(10.0, gt=0)
    #: Longest NDJSON line; longer lines are rejected with their line number.
    max_line_bytes: int = Field(262_144, ge=1)
    #: Jobs per second each tenant may submit, on average; 0 turns the rate limit off.
    rate_limit_per_second: float = Field(0.0, ge=0)
    #: Jobs a tenant may submit at once after idling; 0 means one second's worth.
    rate_limit_burst: int = Field(0, ge=0)
    #: Queued plus running jobs per tenant; 0 means no cap.
    max_queued_per_tenant: int = Field(0, ge=0)
    #: Schedules per tenant; 0 means no limit. Every schedule may fire once a second, and
    #: the relay fires at most 100 a pass, oldest due first.
    max_schedules_per_tenant: int = Field(100, ge=0)
    #: Seconds an api process trusts a live key without asking PostgreSQL again; a key
    #: revoked outside the api (the CLI) is refused within this. 0 looks up every request.
    key_cache_seconds: float = Field(2.0, ge=0, le=60)

    # Webhooks, delayed jobs and schedules (README "Webhooks", "Delayed and periodic jobs").
    #: Let webhook URLs resolve to loopback, private or link-local addresses (development).
    webhook_allow_private: bool = False
    #: Seals endpoint secrets at rest (AES-GCM); production refuses new endpoints without it.
    webhook_secret_key: str | None = None
    #: Webhook requests in flight at once, per sender (the relay runs one).
    webhook_concurrency: int = Field(64, ge=1, le=1000)
    #: Seconds a receiver has to answer.
    webhook_timeout: float = Field(10.0, gt=0)
    #: Certificate authorities (PEM) a receiver's https certificate may also be signed
    #: by, besides the system's (certifi's): a private CA of internal receivers.
    webhook_ca_file: Path | None = None
    #: Exponential backoff with jitter between attempts of a delivery (seconds).
    webhook_backoff_base: float = Field(10.0, gt=0)
    webhook_backoff_max: float = Field(3600.0, gt=0)
    #: Seconds after its event a delivery is retried before it is marked failed.
    webhook_retry_for: float = Field(86_400.0, gt=0)
    #: Attempts kept per delivery (status code and time of each).
    webhook_history: int = Field(20, ge=1, le=1000)
    #: Seconds a claimed delivery is held by its sender before another may take it.
    webhook_lease_seconds: float = Field(60.0, gt=0)
    #: Seconds workers trust their list of tenants that have endpoints: a new endpoint gets
    #: the events of jobs finishing at most this long after it was created.
    webhook_endpoint_cache_seconds: float = Field(5.0, ge=0)
    #: Longest delay (run_at or delay) a job may be submitted with.
    max_delay_seconds: float = Field(366 * 86_400.0, gt=0)

    def credentials_path(self) -> Path:
        """Where `babelq up` stores generated URLs and secrets."""
        return self.home / "credentials.json"

    def api_base_url(self) -> str:
        """The api's URL: api_url if set, else its bind address."""
        return self.api_url or f"http://{self.api_host}:{self.api_port}"

    def production_problems(self, service: Literal["api", "flower"]) -> list[str]:
        """Why `service` must not start with these settings; always empty outside production."""
        if self.env != "production":
            return []
        if service == "flower":
            return _flower_problems(self.flower_user, self.flower_password)
        return _api_problems(self)


def _api_problems(settings: Settings) -> list[str]:
    problems = [f"BABELQ_{name.upper()} is not set" for name in ("database_url", "redis_url")
                if not getattr(settings, name)]
    for name in ("database_url", "redis_url"):
        url = getattr(settings, name)
        if url and _password(url).lower() in PLACEHOLDER_SECRETS:
            problems.append(f"BABELQ_{name.upper()} has no password, or a placeholder one")
    if settings.plugins:
        problems.append("BABELQ_PLUGINS is set; extra job kinds are for development and tests")
    return problems


def _password(url: str) -> str:
    """The password a database or Redis URL carries, in its user part or its query; "" if none."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    return parts.password or query.get("password", "")


def _flower_problems(user: str | None, password: str | None) -> list[str]:
    problems = []
    if not user or user.lower() in PLACEHOLDER_SECRETS:
        problems.append("BABELQ_FLOWER_USER is empty or a placeholder")
    if not password or password.lower() in PLACEHOLDER_SECRETS:
        problems.append("BABELQ_FLOWER_PASSWORD is empty or a placeholder")
    elif len(password) < MIN_FLOWER_PASSWORD:
        problems.append(f"BABELQ_FLOWER_PASSWORD is shorter than {MIN_FLOWER_PASSWORD} characters")
    return problems


def read_credentials(path: Path) -> dict[str, Any]:
    """What `babelq up` saved at path, or {} (missing, unreadable or not an object)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with gaps filled from .babelq/credentials.json."""
    settings = Settings(**overrides)
    saved = read_credentials(settings.credentials_path())
    keys = ("database_url", "redis_url", "api_url", "api_key", "flower_user", "flower_password")
    fill = {k: saved[k] for k in keys if getattr(settings, k) is None and saved.get(k)}
    return settings.model_copy(update=fill) if fill else settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
