"""deploy/kubernetes: valid for the cluster, wired to the real app, locked down.

No cluster needed: the base and each overlay are built in Python
(tests/kubernetes_manifests.py) and checked against the Kubernetes schemas that
kubernetes-validate ships, the `Settings` class, the `babelq` CLI and the Dockerfile.
That the KEDA trigger's metric is exported is checked against a running api in
tests/integration/test_kubernetes_metrics.py.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml

from app.config import Settings
from tests.kubernetes_manifests import (
    KUBE,
    OVERLAYS,
    ROOT,
    Resource,
    all_builds,
    build,
    containers,
    of_kind,
    pod_spec,
    read_env,
)

KINDS = ("encode", "enumerate", "evaluate")
#: The Kubernetes version whose schemas the manifests must satisfy.
K8S_VERSION = "1.37.0"
#: Kinds defined by a CRD, not by Kubernetes itself.
CRD_KINDS = {"ScaledObject"}
#: Ports a worker may reach: DNS, PostgreSQL, Redis, Redis Sentinel.
WORKER_PORTS = {53, 5432, 6379, 26379}
BUILDS = all_builds()


def _ids(build_name: str) -> list[tuple[str, str]]:
    return [(build_name, f"{r['kind']}/{r['metadata']['name']}") for r in BUILDS[build_name]]


def _find(build_name: str, ident: str) -> Resource:
    kind, name = ident.split("/", 1)
    return of_kind(BUILDS[build_name], kind)[name]


#: Every resource Kubernetes itself defines; CRDs (KEDA's) are checked below.
EVERY_RESOURCE = [pair for name in BUILDS for pair in _ids(name)
                  if pair[1].split("/")[0] not in CRD_KINDS]


def _workloads(build_name: str = "base") -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in BUILDS[build_name] if pod_spec(r) is not None}


def _argv(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def _component(resource: Resource) -> str:
    return str(resource["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"])


@pytest.mark.parametrize(("build_name", "ident"), EVERY_RESOURCE)
def test_manifest_validates_against_the_kubernetes_schema(build_name: str, ident: str) -> None:
    """Strict: an unknown or misspelt field fails, as `kubectl apply` would reject it."""
    kubernetes_validate.validate(_find(build_name, ident), K8S_VERSION, strict=True)


def test_keda_objects_validate_against_the_published_crd() -> None:
    """Against KEDA's own CRD (keda.sh_scaledobjects.yaml) when a copy is on this machine.

    The API server prunes fields a CRD does not know instead of refusing them, so a
    misspelt field would vanish silently: unknown fields fail here.
    """
    crd_path = os.environ.get("BABELQ_KEDA_CRD")
    if not crd_path:
        pytest.skip("KEDA's CRD is not shipped by kubernetes-validate and not vendored here; "
                    "set BABELQ_KEDA_CRD to keda.sh_scaledobjects.yaml from a KEDA release")
    import jsonschema

    crd = next(d for d in yaml.safe_load_all(Path(crd_path).read_text()) if d)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = _closed(version["schema"]["openAPIV3Schema"])
    for build_name in BUILDS:
        for name, obj in of_kind(BUILDS[build_name], "ScaledObject").items():
            errors = list(jsonschema.Draft7Validator(schema).iter_errors(obj))
            assert not errors, f"{build_name} {name}: {errors[0].message}"


def _closed(schema: Any) -> Any:
    """The schema with every object that lists its properties refusing any other."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        closed["additionalProperties"] = False
    if "properties" in schema:
        closed["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
    return closed


@pytest.mark.parametrize("build_name", list(BUILDS))
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_has_workers_scaled_on_its_backlog(build_name: str, kind: str) -> None:
    """A Deployment consuming only that kind's queue, scaled by a Prometheus trigger on
    that kind's queued and running jobs."""
    scaled = of_kind(BUILDS[build_name], "ScaledObject")[f"babelq-worker-{kind}"]
    target = _workloads(build_name)[scaled["spec"]["scaleTargetRef"]["name"]]
    assert target["kind"] == "Deployment"
    argv = _argv(target["spec"]["template"]["spec"]["containers"][0])
    assert argv[:2] == ["babelq", "worker"] and argv[argv.index("-Q") + 1] == kind
    assert "replicas" not in target["spec"], "KEDA owns the replica count"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert f'kind="{kind}"' in query and "queued" in query
    # Every api pod exports the same PostgreSQL count: a plain sum over the scraped pods
    # would multiply the backlog by their number (and the workers with it).
    assert query.startswith("max(sum by (instance) ("), query
    assert scaled["spec"]["fallback"]["replicas"] >= 1, "a metrics outage must not idle a kind"


def test_the_api_is_scaled_on_cpu() -> None:
    """The HPA targets the api Deployment and scales on CPU use, which names no metric."""
    for build_name in BUILDS:
        hpa = of_kind(BUILDS[build_name], "HorizontalPodAutoscaler")["babelq-api"]
        assert hpa["spec"]["scaleTargetRef"]["name"] in _workloads(build_name)
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def _env_names(resources: tuple[Resource, ...]) -> dict[str, str]:
    """Every variable the manifests hand a process -> where it is set."""
    found: dict[str, str] = {}
    for r in resources:
        if r["kind"] == "ConfigMap":
            found.update(dict.fromkeys(r["data"], f"ConfigMap/{r['metadata']['name']}"))
        if r["kind"] == "Secret":
            found.update(dict.fromkeys(r["stringData"], f"Secret/{r['metadata']['name']}"))
        for c in containers(r):
            found.update({e["name"]: f"{r['metadata']['name']}/{c['name']}"
                          for e in c.get("env", [])})
    return found


@pytest.mark.parametrize("build_name", list(BUILDS))
def test_every_variable_is_a_setting(build_name: str) -> None:
    """A misspelt BABELQ_ variable would be ignored silently by Settings (extra=ignore)."""
    fields = {f"BABELQ_{name.upper()}" for name in Settings.model_fields}
    wrong = {k: where for k, where in _env_names(BUILDS[build_name]).items() if k not in fields}
    assert not wrong, f"not Settings fields: {wrong}"


@pytest.mark.parametrize("build_name", list(BUILDS))
def test_every_env_source_exists(build_name: str) -> None:
    """Each envFrom names a ConfigMap or Secret the build defines (or the pod never starts);
    the base leaves the Secrets to its overlays."""
    have = {(r["kind"], r["metadata"]["name"]) for r in BUILDS[build_name]}
    wanted = {("ConfigMap", s["configMapRef"]["name"]) if "configMapRef" in s
              else ("Secret", s["secretRef"]["name"])
              for r in BUILDS[build_name] for c in containers(r) for s in c.get("envFrom", [])}
    if build_name == "base":
        wanted = {(kind, name) for kind, name in wanted if kind != "Secret"}
    assert wanted <= have, f"missing: {sorted(wanted - have)}"


def test_example_secrets_are_refused_in_production() -> None:
    """The committed examples carry placeholders the processes refuse to start with."""
    for overlay in OVERLAYS:
        values: dict[str, str] = {}
        for name in ("database", "redis", "flower"):
            values |= read_env(KUBE / "overlays" / overlay / f"{name}.env.example")
        config = of_kind(build(KUBE / "overlays" / overlay), "ConfigMap")["babelq-config"]
        merged = {**config["data"], **values}
        settings = Settings(**{k.removeprefix("BABELQ_").lower(): v for k, v in merged.items()})
        assert settings.env == "production"
        assert any("DATABASE_URL" in p for p in settings.production_problems("api"))
        assert any("REDIS_URL" in p for p in settings.production_problems("api"))
        assert settings.production_problems("flower")


CONTAINERS = [(name, c["name"]) for name, r in _workloads().items() for c in containers(r)]


@pytest.mark.parametrize(("workload", "container"), CONTAINERS)
def test_container_command_is_a_babelq_subcommand(workload: str, container: str) -> None:
    """The subcommand exists and accepts every option the container passes."""
    from app.cli import app

    (spec,) = [c for c in containers(_workloads()[workload]) if c["name"] == container]
    argv = _argv(spec)
    assert argv[:1] == ["babelq"], f"{workload}/{container} runs {argv}"
    cli: Any = typer.main.get_command(app)
    parent = cli.context_class(cli, info_name="babelq")
    command = cli.get_command(parent, argv[1])
    assert command is not None, f"babelq has no subcommand {argv[1]!r}"
    try:
        command.make_context(argv[1], argv[2:], parent=parent)
    except Exception as exc:  # click's UsageError, whichever click raised it
        message = getattr(exc, "format_message", exc.__str__)()
        pytest.fail(f"`{shlex.join(argv)}` is rejected: {message}")


def _dockerfile_uid() -> tuple[int, int]:
    """The uid and gid of the Dockerfile's final USER, which must be numeric."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    user = [line.split(None, 1)[1] for line in lines if line.startswith("USER ")][-1]
    uid, _, gid = user.strip().partition(":")
    assert uid.isdigit() and gid.isdigit(), f"USER {user}: kubelet verifies only numeric users"
    assert f"--uid {uid}" in (ROOT / "Dockerfile").read_text(), "USER is not the user created"
    return int(uid), int(gid)


@pytest.mark.parametrize("workload", list(_workloads()))
def test_pods_run_as_the_images_non_root_user(workload: str) -> None:
    uid, gid = _dockerfile_uid()
    assert uid != 0
    context = pod_spec(_workloads()[workload])["securityContext"]  # type: ignore[index]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)


@pytest.mark.parametrize("workload", list(_workloads()))
def test_pods_are_locked_down(workload: str) -> None:
    """Read-only root (a /tmp emptyDir instead), no escalation, no capabilities, seccomp,
    no service-account token."""
    spec = pod_spec(_workloads()[workload])
    assert spec is not None
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for c in containers(_workloads()[workload]):
        context = c["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, c["name"]
        assert context["readOnlyRootFilesystem"] is True, c["name"]
        assert context["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "add" not in context["capabilities"], c["name"]
        tmp = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and tmp[0] in empty_dirs, f"{c['name']}: /tmp is not an emptyDir"


@pytest.mark.parametrize("workload", list(_workloads()))
def test_every_container_has_requests_and_limits(workload: str) -> None:
    for c in containers(_workloads()[workload]):
        for bound in ("requests", "limits"):
            assert set(c["resources"][bound]) == {"cpu", "memory"}, f"{c['name']} {bound}"


def test_api_probes_health_and_ready_on_its_port() -> None:
    """Liveness on /health (the process), readiness on /ready (PostgreSQL, Redis, schema)."""
    api = _workloads()["babelq-api"]["spec"]["template"]["spec"]["containers"][0]
    argv = _argv(api)
    port = int(argv[argv.index("--port") + 1])
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert ports["http"] == port
    for probe, path in (("livenessProbe", "/health"), ("startupProbe", "/health"),
                        ("readinessProbe", "/ready")):
        assert api[probe]["httpGet"] == {"path": path, "port": "http"}, probe


def test_flower_probes_its_open_healthcheck() -> None:
    flower = _workloads()["babelq-flower"]["spec"]["template"]["spec"]["containers"][0]
    assert flower["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert flower["readinessProbe"]["httpGet"]["path"] == "/healthcheck"


@pytest.mark.parametrize("kind", KINDS)
def test_workers_finish_their_chunks_before_they_are_killed(kind: str) -> None:
    """The grace period covers the visibility timeout, the bound on the longest chunk (a
    longer one Redis hands out again anyway); new pods start before old ones stop."""
    worker = _workloads()[f"babelq-worker-{kind}"]
    config = of_kind(BUILDS["base"], "ConfigMap")["babelq-config"]["data"]
    visibility = float(config.get("BABELQ_VISIBILITY_TIMEOUT", Settings().visibility_timeout))
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= visibility
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_relay_runs_two_replicas() -> None:
    for build_name in BUILDS:
        relay = _workloads(build_name)["babelq-relay"]
        assert relay["spec"]["replicas"] == 2
        assert _argv(relay["spec"]["template"]["spec"]["containers"][0]) == ["babelq", "relay"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and In expressions) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", "the test only reads In expressions"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_every_long_running_pod_but_flower_has_a_disruption_budget() -> None:
    """Flower has one replica: a budget keeping it would block every node drain."""
    pdbs = of_kind(BUILDS["base"], "PodDisruptionBudget").values()
    for name, workload in _workloads().items():
        if workload["kind"] != "Deployment":
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if _selects(p["spec"]["selector"], labels)]
        assert len(covering) == (0 if name == "babelq-flower" else 1), name


def test_migrations_run_before_new_pods_start() -> None:
    """A Job migrates; every pod that uses the database waits for it in an init container."""
    job = of_kind(BUILDS["base"], "Job")["babelq-migrate"]
    assert _argv(job["spec"]["template"]["spec"]["containers"][0]) == ["babelq", "migrate"]
    for name, workload in _workloads().items():
        spec = workload["spec"]["template"]["spec"]
        uses_db = any(s.get("secretRef", {}).get("name") == "babelq-database"
                      for s in spec["containers"][0].get("envFrom", []))
        if workload["kind"] == "Deployment" and uses_db:
            inits = [_argv(c)[:3] for c in spec.get("initContainers", [])]
            assert ["babelq", "migrate", "--wait"] in inits, name


def _policies_for(component: str) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": "babelq", "app.kubernetes.io/component": component}
    return [p["spec"] for p in of_kind(BUILDS["base"], "NetworkPolicy").values()
            if _selects(p["spec"]["podSelector"], labels)]


def _allowed(component: str, direction: str) -> set[int]:
    """Ports a component's pods may use in a direction ("ingress" or "egress")."""
    return {port["port"] for spec in _policies_for(component)
            for rule in spec.get(direction, []) for port in rule.get("ports", [])}


def test_everything_is_denied_unless_allowed() -> None:
    deny = of_kind(BUILDS["base"], "NetworkPolicy")["babelq-default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny


@pytest.mark.parametrize(("component", "port"),
                         [("api", 8000), ("flower", 5555), ("worker", None), ("relay", None),
                          ("migrate", None)])
def test_only_the_api_and_flower_are_reachable(component: str, port: int | None) -> None:
    assert _allowed(component, "ingress") == ({port} if port else set())


def test_only_the_relay_reaches_out_and_only_to_public_addresses() -> None:
    """The webhook sender (in the relay) calls receivers; no pod reaches the cluster's own
    private ranges or the cloud metadata address through that rule."""
    for component in ("api", "worker", "flower", "migrate"):
        assert not _allowed(component, "egress") & {80, 443}, component
    rules = [rule for spec in _policies_for("relay") for rule in spec.get("egress", [])
             if {p["port"] for p in rule["ports"]} & {80, 443}]
    blocks = [peer["ipBlock"] for rule in rules for peer in rule["to"]]
    assert blocks and all({"10.0.0.0/8", "169.254.0.0/16"} <= set(b.get("except", []))
                          for b in blocks)


def test_workers_reach_only_dns_postgres_and_redis() -> None:
    assert _allowed("worker", "egress") == WORKER_PORTS
    for spec in _policies_for("worker"):
        for rule in spec.get("egress", []):
            assert rule.get("to"), "an egress rule without `to` allows every address"
    assert 5432 not in _allowed("flower", "egress"), "Flower needs no database"


def test_ingress_serves_api_and_flower_over_tls() -> None:
    """Every host is in the TLS section; backends are the api's and Flower's Services."""
    for build_name in BUILDS:
        ingress = of_kind(BUILDS[build_name], "Ingress")["babelq"]["spec"]
        services = of_kind(BUILDS[build_name], "Service")
        tls_hosts = {h for entry in ingress["tls"] for h in entry["hosts"]}
        for rule in ingress["rules"]:
            assert rule["host"] in tls_hosts
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in ports
        paths = {p["path"] for r in ingress["rules"] for p in r["http"]["paths"]}
        assert not paths & {"/ready", "/metrics", "/docs"}, "keep these off the public side"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_set_namespace_and_image(overlay: str) -> None:
    resources = BUILDS[overlay]
    (namespace,) = of_kind(resources, "Namespace")
    labels = of_kind(resources, "Namespace")[namespace]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for r in resources:
        if r["kind"] != "Namespace":
            assert r["metadata"]["namespace"] == namespace, r["metadata"]["name"]
        for c in containers(r):
            assert c["image"].endswith(":0.1.0") and "/" in c["image"], c["image"]


def test_secret_files_are_not_committed() -> None:
    """The real env files stay out of git; only the .example files are tracked."""
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "deploy/kubernetes/overlays/*/*.env" in ignored


#: The settings each `babelq` subcommand refuses to start without.
REQUIRED = {
    "api": {"BABELQ_DATABASE_URL", "BABELQ_REDIS_URL", "BABELQ_WEBHOOK_SECRET_KEY"},
    "worker": {"BABELQ_DATABASE_URL", "BABELQ_REDIS_URL"},
    "relay": {"BABELQ_DATABASE_URL", "BABELQ_REDIS_URL", "BABELQ_WEBHOOK_SECRET_KEY"},
    "migrate": {"BABELQ_DATABASE_URL"},
    "flower": {"BABELQ_REDIS_URL", "BABELQ_FLOWER_USER", "BABELQ_FLOWER_PASSWORD"},
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_process_gets_the_settings_it_needs_and_no_other_secret(overlay: str) -> None:
    """Every container sees what its subcommand requires; workers never see Flower's login
    and Flower never sees the database's."""
    resources = BUILDS[overlay]
    sources = {(r["kind"], r["metadata"]["name"]): set(r.get("data") or r.get("stringData"))
               for r in resources if r["kind"] in ("ConfigMap", "Secret")}
    for r in resources:
        for c in containers(r):
            seen = {name for s in c.get("envFrom", [])
                    for name in sources[("ConfigMap", s["configMapRef"]["name"])
                                        if "configMapRef" in s
                                        else ("Secret", s["secretRef"]["name"])]}
            command = _argv(c)[1]
            assert REQUIRED[command] <= seen, f"{r['metadata']['name']}/{c['name']}"
            if command not in ("api", "relay"):
                assert "BABELQ_WEBHOOK_SECRET_KEY" not in seen, c["name"]
            if command != "flower":
                assert "BABELQ_FLOWER_PASSWORD" not in seen, c["name"]
            else:
                assert "BABELQ_DATABASE_URL" not in seen


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_test_builder_agrees_with_kustomize(overlay: str, tmp_path: Path) -> None:
    """Where kubectl is installed, its own kustomize builds exactly what the tests check
    (the Secrets' name hashes aside)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the Python builder is checked against it "
                    "where it is")
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBE, tree)
    for example in (tree / "overlays" / overlay).glob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    built = subprocess.run([kubectl, "kustomize", str(tree / "overlays" / overlay)],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    for secret in re.findall(r"name: (babelq-\w+)-[a-z0-9]{10}\n", built):
        built = re.sub(rf"\b{secret}-[a-z0-9]{{10}}\b", secret, built)
    real = {(r["kind"], r["metadata"]["name"]): r for r in yaml.safe_load_all(built) if r}
    for key, resource in real.items():
        if key[0] == "Secret":
            data = resource.pop("data")
            resource["stringData"] = {k: base64.b64decode(v).decode() for k, v in data.items()}
    assert real == {(r["kind"], r["metadata"]["name"]): r for r in BUILDS[overlay]}


@pytest.mark.parametrize("workload", [*(f"babelq-worker-{k}" for k in KINDS), "babelq-relay"])
def test_worker_and_relay_are_restarted_when_their_loop_hangs(workload: str) -> None:
    """No HTTP to probe: the probe reads the age of the liveness file their loop touches
    (app/observe/alive.py), kept on the /tmp emptyDir. The command itself is run against
    real files in tests/integration/test_cli.py."""
    spec = _workloads()[workload]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert env["BABELQ_ALIVE_FILE"].startswith("/tmp/")
    for probe in ("startupProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["sh", "-c"] and "$BABELQ_ALIVE_FILE" in command[2], probe
    live = container["livenessProbe"]
    # Restarted only after several missed touches (every 5 s) and looks.
    assert live["periodSeconds"] * live["failureThreshold"] >= 60
