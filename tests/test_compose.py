"""docker-compose.yml and Dockerfile run the processes docs/design.md names, wired as it says.

No Docker needed: the files are parsed, and every container's command line is checked
against the real `babelq` CLI, so a renamed subcommand or option fails here, not in
production.
"""

from __future__ import annotations

import json
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("encode", "enumerate", "evaluate")
WORKERS = tuple(f"worker-{kind}" for kind in KINDS)
APP_SERVICES = ("migrate", "api", *WORKERS, "relay", "flower")
ALL_SERVICES = ("postgres", "redis", *APP_SERVICES)
#: `${NAME:?message}`: compose refuses to start while NAME is unset or empty.
REQUIRED_VARIABLE = re.compile(r"\$\{(\w+):\?[^}]*\}")


@cache
def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _service(name: str) -> dict[str, Any]:
    service = _compose()["services"][name]
    assert isinstance(service, dict)
    return service


@cache
def _dockerfile() -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = (line.strip() for line in text.splitlines())
    pairs = (line.split(None, 1) for line in lines if line and not line.startswith("#"))
    return tuple((pair[0].upper(), pair[1] if len(pair) > 1 else "") for pair in pairs)


def _dockerfile_last(instruction: str) -> str | None:
    found = [args for name, args in _dockerfile() if name == instruction]
    return found[-1] if found else None


def _words(value: str | list[str] | None) -> list[str]:
    """Compose and Dockerfile commands: a list, a JSON exec form, or a shell string."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(word) for word in value]
    return list(json.loads(value)) if value.lstrip().startswith("[") else shlex.split(value)


def _argv(name: str) -> list[str]:
    """The full command line a container of this service runs."""
    service = _service(name)
    entrypoint = service.get("entrypoint") or _dockerfile_last("ENTRYPOINT")
    return _words(entrypoint) + _words(service.get("command") or _dockerfile_last("CMD"))


def _environment(name: str) -> dict[str, str]:
    env = _service(name).get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _interpolate(value: str) -> str:
    """Replace each `${NAME...}` by a token naming the variable, as compose would by a value."""
    return re.sub(r"\$\{(\w+)[^}]*\}", lambda m: f"__{m[1]}__", value)


def _option(argv: list[str], *names: str) -> str | None:
    """Value of an option given as `-Q x`, `--queues x` or `--queues=x`."""
    for index, word in enumerate(argv):
        if word in names and index + 1 < len(argv):
            return argv[index + 1]
        for name in names:
            if word.startswith(f"{name}="):
                return word.split("=", 1)[1]
    return None


def _depends_on(name: str) -> dict[str, str]:
    """Dependency name -> condition, whatever form compose was given."""
    deps = _service(name).get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {dep: spec.get("condition", "service_started") for dep, spec in deps.items()}


def test_compose_defines_every_process() -> None:
    """postgres, redis, migrate, api, one worker pool per kind, relay and flower."""
    missing = set(ALL_SERVICES) - set(_compose()["services"])
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_app_services_run_one_image_built_from_this_repo() -> None:
    """Every app container runs the same image, built from the Dockerfile here."""
    images = {
        json.dumps([_service(n).get("image"), _service(n).get("build")]) for n in APP_SERVICES
    }
    assert len(images) == 1, f"app services use different images: {images}"
    build = _service("api").get("build")
    context = build if isinstance(build, str) else (build or {}).get("context")
    assert context is not None, "app services are not built from the Dockerfile"
    assert (ROOT / context / "Dockerfile").is_file()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_runs_babelq(name: str) -> None:
    """Each app container's entrypoint is the babelq CLI."""
    assert _argv(name)[:1] == ["babelq"], f"{name} runs {_argv(name)}"


@pytest.mark.parametrize("name", [*APP_SERVICES, "Dockerfile CMD"])
def test_command_is_accepted_by_the_cli(name: str) -> None:
    """The subcommand exists and the CLI accepts every option the container passes."""
    from app.cli import app

    if name == "Dockerfile CMD":
        argv = _words(_dockerfile_last("ENTRYPOINT")) + _words(_dockerfile_last("CMD"))
    else:
        argv = _argv(name)
    # Typer may vendor its own click, so the click objects are used by duck typing.
    cli: Any = typer.main.get_command(app)
    parent = cli.context_class(cli, info_name="babelq")
    command = cli.get_command(parent, argv[1])
    assert command is not None, f"{name}: babelq has no subcommand {argv[1]!r}"
    try:
        command.make_context(argv[1], argv[2:], parent=parent)
    except Exception as exc:  # click's UsageError, whichever click raised it
        message = getattr(exc, "format_message", exc.__str__)()
        pytest.fail(f"{name}: `{shlex.join(argv)}` is rejected: {message}")


def test_worker_pools_cover_each_kind_exactly_once() -> None:
    """One pool per kind: encode, enumerate and evaluate each consumed by one service."""
    workers = [n for n in _compose()["services"] if _argv(n)[1:2] == ["worker"]]
    assert sorted(workers) == sorted(WORKERS)
    queues = [_option(_argv(n), "-Q", "--queues") or "" for n in workers]
    consumed = sorted(q.strip() for value in queues for q in value.split(","))
    assert consumed == sorted(KINDS)


@pytest.mark.parametrize("name", WORKERS)
def test_worker_pools_are_scalable(name: str) -> None:
    """`--scale` needs no fixed container name and no fixed host port."""
    service = _service(name)
    assert "container_name" not in service
    assert not service.get("ports")


def test_redis_keeps_messages_and_never_evicts() -> None:
    """AOF on a volume survives restarts; noeviction refuses rather than drops messages."""
    command = _words(_service("redis").get("command"))
    assert _option(command, "--appendonly") == "yes"
    assert _option(command, "--maxmemory-policy") == "noeviction"
    mounts = [str(volume).split(":")[1] for volume in _service("redis").get("volumes", [])]
    assert "/data" in mounts


def test_app_services_share_the_compose_database() -> None:
    """One BABELQ_DATABASE_URL, pointing at the postgres service with its own credentials."""
    urls = {_environment(n).get("BABELQ_DATABASE_URL") for n in APP_SERVICES}
    assert len(urls) == 1 and None not in urls, f"database URLs differ: {urls}"
    url = make_url(_interpolate(str(urls.pop())))
    postgres = {k: _interpolate(v) for k, v in _environment("postgres").items()}
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port or 5432) == ("postgres", 5432)
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.database == postgres["POSTGRES_DB"]


def test_app_services_share_the_compose_redis() -> None:
    """One BABELQ_REDIS_URL, pointing at the redis service."""
    urls = {_environment(n).get("BABELQ_REDIS_URL") for n in APP_SERVICES}
    assert len(urls) == 1 and None not in urls, f"Redis URLs differ: {urls}"
    url = urlsplit(_interpolate(str(urls.pop())))
    assert (url.scheme, url.hostname, url.port or 6379) == ("redis", "redis", 6379)


def test_redis_requires_the_password_the_services_use() -> None:
    """Redis has requirepass (from a required variable), and the app URL carries it."""
    command = _words(_service("redis").get("command"))
    required = _option(command, "--requirepass")
    assert required and REQUIRED_VARIABLE.fullmatch(required)
    url = urlsplit(_interpolate(_environment("api")["BABELQ_REDIS_URL"]))
    assert url.password == _interpolate(required)
    # The healthcheck's redis-cli authenticates through REDISCLI_AUTH.
    assert _environment("redis").get("REDISCLI_AUTH") == required


@pytest.mark.parametrize("name", APP_SERVICES)
def test_production_refuses_empty_secrets(name: str) -> None:
    """Production mode, and compose stops when a secret is unset or empty."""
    env = _environment(name)
    assert env.get("BABELQ_ENV") == "production"
    for key in ("BABELQ_FLOWER_USER", "BABELQ_FLOWER_PASSWORD"):
        assert REQUIRED_VARIABLE.fullmatch(env.get(key, "")), f"{key} must be ${{VAR:?...}}"
    password = make_url(_interpolate(env["BABELQ_DATABASE_URL"])).password
    assert REQUIRED_VARIABLE.fullmatch(_environment("postgres")["POSTGRES_PASSWORD"])
    assert password == _interpolate(_environment("postgres")["POSTGRES_PASSWORD"])


def test_services_start_in_order() -> None:
    """postgres healthy -> migrate succeeds -> everything else; redis healthy first."""
    assert _depends_on("migrate").get("postgres") == "service_healthy"
    for name in (n for n in APP_SERVICES if n != "migrate"):
        deps = _depends_on(name)
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("redis") == "service_healthy", name
    for name in ("postgres", "redis"):
        assert _service(name).get("healthcheck"), f"{name} has no healthcheck"


@pytest.mark.parametrize(("name", "port"), [("api", 8000), ("flower", 5555)])
def test_api_and_flower_are_published(name: str, port: int) -> None:
    """The documented ports reach the host's loopback (for a TLS proxy), not the network."""
    ports = [str(p) for p in _service(name).get("ports", [])]
    assert ports == [f"127.0.0.1:{port}:{port}"]


def test_image_runs_as_non_root() -> None:
    """The Dockerfile's final USER is an unprivileged one."""
    user = _dockerfile_last("USER")
    assert user is not None, "Dockerfile never sets USER: containers would run as root"
    assert user.split(":")[0] not in {"root", "0"}


# Monitoring: Prometheus and Grafana under the `monitoring` profile, wired to deploy/.

MONITORING = ("prometheus", "grafana")


def _mounts(name: str) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (relative to the compose file)."""
    mounts = {}
    for volume in _service(name).get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if source.startswith("."):
            mounts[target] = ROOT / source
    return mounts


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("name", MONITORING)
def test_monitoring_runs_only_under_its_profile(name: str) -> None:
    """`docker compose up` leaves it out; `--profile monitoring` starts it."""
    assert _service(name).get("profiles") == ["monitoring"]
    ports = [str(p) for p in _service(name).get("ports", [])]
    assert all(p.startswith("127.0.0.1:") for p in ports), ports
    for app_service in ALL_SERVICES:
        assert not _service(app_service).get("profiles"), app_service


def test_prometheus_scrapes_the_api_with_the_mounted_key() -> None:
    config_dir = _mounts("prometheus")["/etc/prometheus"]
    config = _yaml(config_dir / "prometheus.yml")
    for rules in config["rule_files"]:
        assert (config_dir / rules).is_file(), f"rule file {rules} is not in {config_dir}"
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = [t for group in job["static_configs"] for t in group["targets"]]
    host, port = target.split(":")
    api_ports = {p.split(":")[-1] for p in _service(host).get("ports", [])}
    assert port in api_ports and _argv(host)[1] == "api"
    secret = _service("prometheus")["secrets"][0]
    assert job["authorization"]["credentials_file"] == f"/run/secrets/{secret}"
    assert _compose()["secrets"][secret] == {"environment": "BABELQ_PROMETHEUS_API_KEY"}


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    mounts = _mounts("grafana")
    provisioning = mounts["/etc/grafana/provisioning"]
    (source,) = _yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    (provider,) = _yaml(provisioning / "dashboards" / "babelq.yml")["providers"]
    dashboards = mounts[provider["options"]["path"]]
    panels = json.loads((dashboards / "babelq.json").read_text())["panels"]
    uids = {p["datasource"]["uid"] for p in panels if "datasource" in p}
    assert uids == {source["uid"]}
    env = _environment("grafana")
    assert env.get("GF_AUTH_ANONYMOUS_ENABLED") == "false"


@pytest.mark.parametrize("name", [*WORKERS, "relay"])
def test_worker_and_relay_are_healthy_while_their_loop_touches_the_file(
    name: str, tmp_path: Path
) -> None:
    """The healthcheck, run by sh as Docker would ($$ is compose's escaped $), passes on a
    liveness file touched just now and fails on a stale or missing one."""
    import os
    import subprocess
    import time

    check = _service(name)["healthcheck"]
    kind, command = check["test"][0], check["test"][1]
    assert kind == "CMD-SHELL"
    path = _environment(name)["BABELQ_ALIVE_FILE"]
    assert path.startswith("/tmp/")  # the only writable place of the image's user
    alive = tmp_path / "alive"

    def healthy() -> bool:
        env = {**os.environ, "BABELQ_ALIVE_FILE": str(alive)}
        done = subprocess.run(["sh", "-c", command.replace("$$", "$")], env=env,
                              stderr=subprocess.DEVNULL)
        return done.returncode == 0

    assert not healthy()  # missing
    alive.touch()
    assert healthy()
    os.utime(alive, (time.time() - 120, time.time() - 120))
    assert not healthy()
