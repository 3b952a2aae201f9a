"""The one place settings come from: environment (prefix BABELQ_) and .babelq/credentials.json."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

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
    redis_url: str | None = None

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    #: Base URL and key the CLI and client use to reach the api.
    api_url: str | None = None
    api_key: str | None = None

    flower_host: str = "127.0.0.1"
    flower_port: int = 5555
    flower_user: str | None = None
    flower_password: str | None = None

    # Delivery: see docs/design.md "Where the truth lives".
    #: Seconds a claimed job may run before the relay takes it back.
    lease_seconds: float = 120.0
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
    #: Longest NDJSON line; longer lines are rejected with their line number.
    max_line_bytes: int = Field(262_144, ge=1)
    #: Jobs per second each tenant may submit, on average; 0 turns the rate limit off.
    rate_limit_per_second: float = Field(0.0, ge=0)
    #: Jobs a tenant may submit at once after idling; 0 means one second's worth.
    rate_limit_burst: int = Field(0, ge=0)
    #: Queued plus running jobs per tenant; 0 means no cap.
    max_queued_per_tenant: int = Field(0, ge=0)
    #: Seconds an api process trusts a live key without asking PostgreSQL again; a key
    #: revoked outside the api (the CLI) is refused within this. 0 looks up every request.
    key_cache_seconds: float = Field(2.0, ge=0, le=60)

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
        password = urlsplit(getattr(settings, name) or "").password
        if password is not None and password.lower() in PLACEHOLDER_SECRETS:
            problems.append(f"BABELQ_{name.upper()} has an empty or placeholder password")
    if settings.plugins:
        problems.append("BABELQ_PLUGINS is set; extra job kinds are for development and tests")
    return problems


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
