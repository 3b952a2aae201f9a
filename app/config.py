"""The one place settings come from: environment (prefix BABELQ_) and .babelq/credentials.json."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Values that must never be used as secrets in production.
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "admin", "password", "secret", "babelq"})


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

    # Delivery: see system.md "Source of truth and delivery".
    #: Seconds a claimed job may run before the relay takes it back.
    lease_seconds: float = 120.0
    #: Seconds a queued job may wait unstarted before the relay republishes it.
    requeue_after: float = 30.0
    #: Seconds between relay passes.
    relay_interval: float = 1.0
    #: Redis visibility timeout; above the longest chunk, and above the lease.
    visibility_timeout: int = 3600
    worker_max_tasks_per_child: int = 10_000
    default_max_attempts: int = Field(3, ge=1, le=20)
    retry_backoff_base: float = 2.0
    retry_backoff_max: float = 600.0
    #: Jobs per broker message for batches.
    chunk_size: int = Field(500, ge=1, le=10_000)
    #: Accept the test-only kinds test_fail and test_sleep (fault tests; refused in production).
    test_hooks: bool = False
    #: Days finished jobs are kept before the relay prunes them; 0 keeps them forever.
    retention_days: int = 0

    # Limits (see system.md "Tenancy and security").
    max_batch_lines: int = 1_000_000
    max_body_bytes: int = 1_048_576
    max_batch_body_bytes: int = 1_073_741_824
    max_line_bytes: int = 262_144
    rate_limit_per_second: float = 0.0
    rate_limit_burst: int = 0
    max_queued_per_tenant: int = 0

    def credentials_path(self) -> Path:
        """Where `babelq up` stores generated URLs and secrets."""
        return self.home / "credentials.json"


def _credentials(settings: Settings) -> dict[str, Any]:
    path = settings.credentials_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with gaps filled from .babelq/credentials.json."""
    settings = Settings(**overrides)
    saved = _credentials(settings)
    keys = ("database_url", "redis_url", "api_url", "api_key", "flower_user", "flower_password")
    fill = {k: saved[k] for k in keys if getattr(settings, k) is None and saved.get(k)}
    return settings.model_copy(update=fill) if fill else settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
