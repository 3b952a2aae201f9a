"""deploy/kubernetes as the cluster would receive it, built without kustomize.

kustomize keeps plain YAML, so the tests read it directly. The builder here does what
our kustomizations use, and fails on anything else: resources (files and directories),
namespace, images, secretGenerator from env files (the committed `.example` files stand
in for the real, uncommitted ones; the name hash kustomize appends is left out), and
strategic-merge patches (maps merged key by key, lists of named items by name).
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = tuple(sorted(p.name for p in (KUBE / "overlays").iterdir() if p.is_dir()))
#: Kustomization fields the builder understands.
KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images", "secretGenerator",
                "patches"}
#: Kinds that live outside any namespace.
CLUSTER_KINDS = {"Namespace"}

Resource = dict[str, Any]


def load_yaml(path: Path) -> list[Resource]:
    """The documents of a YAML file, empty ones left out."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@cache
def build(directory: Path) -> tuple[Resource, ...]:
    """Every resource the kustomization in directory produces."""
    spec = load_yaml(directory / "kustomization.yaml")[0]
    unknown = set(spec) - KNOWN_FIELDS
    assert not unknown, f"{directory}: the test builder does not know {sorted(unknown)}"
    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        resources += [copy.deepcopy(r) for r in build(path)] if path.is_dir() else load_yaml(path)
    resources += [_secret(directory, gen) for gen in spec.get("secretGenerator", [])]
    for patch in spec.get("patches", []):
        for doc in load_yaml(directory / patch["path"]):
            _apply_patch(resources, doc)
    for resource in resources:
        _set_images(resource, spec.get("images", []))
        if spec.get("namespace") and resource["kind"] not in CLUSTER_KINDS:
            resource["metadata"]["namespace"] = spec["namespace"]
    return tuple(resources)


def _secret(directory: Path, generator: dict[str, Any]) -> Resource:
    data: dict[str, str] = {}
    for env in generator["envs"]:
        path = directory / env
        data.update(read_env(path if path.exists() else path.with_name(path.name + ".example")))
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": generator["name"]}, "stringData": data}


def read_env(path: Path) -> dict[str, str]:
    """KEY=value lines of an env file, comments and blank lines skipped."""
    lines = (line.strip() for line in path.read_text().splitlines())
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def _apply_patch(resources: list[Resource], patch: Resource) -> None:
    name = patch["metadata"]["name"]
    targets = [r for r in resources if (r["kind"], r["metadata"]["name"]) == (patch["kind"], name)]
    assert len(targets) == 1, f"patch {patch['kind']}/{name} matches {len(targets)} resources"
    merged = merge(targets[0], patch)
    targets[0].clear()
    targets[0].update(merged)


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge as our patches use it: maps by key, lists of named maps by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else value
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        by_name = {item["name"]: item for item in base}
        for item in patch:
            by_name[item["name"]] = merge(by_name.get(item["name"], {}), item)
        return list(by_name.values())
    return patch


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _set_images(resource: Resource, images: list[dict[str, str]]) -> None:
    for container in containers(resource):
        for image in images:
            if container["image"].split(":")[0] == image["name"]:
                name = image.get("newName", image["name"])
                container["image"] = f"{name}:{image['newTag']}" if "newTag" in image else name


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    """The pod template's spec of a Deployment or Job, else None."""
    if resource["kind"] not in ("Deployment", "Job"):
        return None
    spec: dict[str, Any] = resource["spec"]["template"]["spec"]
    return spec


def containers(resource: Resource) -> list[dict[str, Any]]:
    """Init containers and containers of a workload's pods."""
    spec = pod_spec(resource)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec["containers"]]


def of_kind(resources: tuple[Resource, ...], kind: str) -> dict[str, Resource]:
    """Resources of one kind by name."""
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def all_builds() -> dict[str, tuple[Resource, ...]]:
    """The base and every overlay, built."""
    return {"base": build(KUBE / "base"),
            **{name: build(KUBE / "overlays" / name) for name in OVERLAYS}}


def trigger_metrics() -> set[str]:
    """Metric names the KEDA triggers' PromQL queries read (function names left out)."""
    names = set()
    for resources in all_builds().values():
        for scaled in of_kind(resources, "ScaledObject").values():
            for trigger in scaled["spec"]["triggers"]:
                names |= set(re.findall(r"([a-zA-Z_:][\w:]*)\s*\{", trigger["metadata"]["query"]))
    return names
