"""Every image and manifest starts `trtserve serve`: the Dockerfile's ENTRYPOINT/CMD of each final
image, combined with each Kubernetes container's command/args the way Kubernetes combines them
(`command` replaces ENTRYPOINT, `args` replaces CMD), gives an argv that the real CLI parser
accepts as the `serve` subcommand. The Helm chart is rendered with `helm template` where helm is
on PATH, else its raw templates are read."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from server.cli.main import build_parser

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "trtserve"
FINAL_STAGES = ("cpu", "gpu")
_STAGE = re.compile(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE | re.MULTILINE)


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its text (from its FROM to the next FROM)."""
    text = (ROOT / "Dockerfile").read_text()
    marks = list(_STAGE.finditer(text))
    return {(m.group(1) or str(i)): text[m.start():(marks[i + 1].start() if i + 1 < len(marks)
                                                     else len(text))]
            for i, m in enumerate(marks)}


def _exec_form(stage: str, instruction: str) -> list[str] | None:
    found = re.findall(rf"^{instruction}\s+(\[.*\])\s*$", stage, re.MULTILINE)
    return json.loads(found[-1]) if found else None


def image_command(stage: str) -> tuple[list[str], list[str]]:
    """(ENTRYPOINT, CMD) of one stage, both in exec form."""
    entrypoint = _exec_form(stage, "ENTRYPOINT")
    cmd = _exec_form(stage, "CMD")
    assert entrypoint is not None and cmd is not None, "ENTRYPOINT and CMD in exec form"
    return entrypoint, cmd


def resolve(entrypoint: list[str], cmd: list[str], container: dict[str, Any]) -> list[str]:
    """Kubernetes' rule: command replaces ENTRYPOINT (and drops CMD); args replace CMD."""
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    return [*entrypoint, *container.get("args", cmd)]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    kind = doc.get("kind")
    if kind == "Deployment":
        return doc["spec"]["template"]["spec"]["containers"]
    if kind == "ServingRuntime":
        return doc["spec"]["containers"]
    if kind == "InferenceService":  # the model container runs the runtime's command
        return [doc["spec"]["predictor"]["model"]]
    return []


def helm_render() -> list[dict[str, Any]]:
    """`helm template` output (CPU and GPU values), or the raw template's container lines."""
    helm = shutil.which("helm")
    if helm:
        docs = []
        for values in ([], ["--set", "gpu.enabled=true", "--set", "cache.size=20Gi"]):
            out = subprocess.run([helm, "template", "t", str(CHART), *values], check=True,
                                 capture_output=True, text=True, timeout=60).stdout
            docs += [d for d in yaml.safe_load_all(out) if d]
        return docs
    text = (CHART / "templates" / "deployment.yaml").read_text()
    container: dict[str, Any] = {}
    for key in ("command", "args"):
        match = re.search(rf"^ {{10}}{key}:\s*(\[.*\])\s*$", text, re.MULTILINE)
        if match:
            container[key] = json.loads(match.group(1))
    return [{"kind": "Deployment", "metadata": {"name": "helm"},
             "spec": {"template": {"spec": {"containers": [container]}}}}]


def manifest_containers() -> list[tuple[str, dict[str, Any]]]:
    out = []
    files = [p for p in DEPLOY.rglob("*.yaml") if CHART not in p.parents]
    docs = [(p.name, d) for p in files for d in yaml.safe_load_all(p.read_text()) if d]
    docs += [("helm", d) for d in helm_render()]
    for name, doc in docs:
        if isinstance(doc, dict):
            out += [(f"{name}:{doc['metadata']['name']}", c) for c in _containers(doc)]
    return out


def assert_runs_serve(argv: list[str]) -> None:
    assert argv[:2] == ["trtserve", "serve"], argv
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.host == "0.0.0.0", argv


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_image_default_command_is_trtserve_serve(stage: str) -> None:
    """`docker run IMAGE` runs `trtserve serve --host 0.0.0.0`."""
    entrypoint, cmd = image_command(dockerfile_stages()[stage])
    assert_runs_serve([*entrypoint, *cmd])


def test_last_stage_is_the_cpu_image() -> None:
    """A plain `docker build .` builds the last stage: the CPU image."""
    assert list(dockerfile_stages())[-1] == "cpu"


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_every_manifest_container_runs_trtserve_serve(stage: str) -> None:
    """Each Deployment (k8s, Helm), ServingRuntime and InferenceService container, on either
    image, resolves to `trtserve serve ...`."""
    entrypoint, cmd = image_command(dockerfile_stages()[stage])
    containers = manifest_containers()
    names = {n.split(":")[0] for n, _ in containers}
    assert {"deployment.yaml", "deployment-gpu.yaml", "servingruntime.yaml", "helm"} <= names
    for name, container in containers:
        argv = resolve(entrypoint, cmd, container)
        assert argv[:2] == ["trtserve", "serve"], name
        assert_runs_serve(argv)


def test_resolution_follows_kubernetes() -> None:
    """The rule itself: a bare `args: [serve]` without ENTRYPOINT would run `serve` (the old bug);
    `command` overrides the ENTRYPOINT."""
    assert resolve([], ["trtserve", "serve"], {"args": ["serve"]}) == ["serve"]
    assert resolve(["trtserve"], ["serve"], {"command": ["x"]}) == ["x"]
    assert resolve(["trtserve"], ["serve"], {}) == ["trtserve", "serve"]


def test_gpu_image_and_manifests_keep_a_cache() -> None:
    """The GPU image bakes no graph (no `RUN trtserve prepare`); every GPU pod mounts the cache
    directory the image points TRTSERVE_CACHE_DIR at."""
    gpu = dockerfile_stages()["gpu"]
    assert "RUN trtserve" not in gpu
    assert "nvidia/cuda" in (ROOT / "Dockerfile").read_text()
    assert "constraints-gpu.txt" in gpu
    cache = re.search(r"TRTSERVE_CACHE_DIR=(\S+)", gpu)
    assert cache
    gpu_docs = [d for p in DEPLOY.rglob("*.yaml") if CHART not in p.parents
                for d in yaml.safe_load_all(p.read_text())
                if d and "gpu" in json.dumps(d.get("metadata", {}))
                and d.get("kind") in ("Deployment", "InferenceService")]
    assert len(gpu_docs) >= 2
    for doc in gpu_docs:
        (container,) = _containers(doc)
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert cache.group(1) in mounts, doc["metadata"]["name"]
    helm = (CHART / "templates" / "deployment.yaml").read_text()
    assert "mountPath: /opt/trtserve/cache" in helm and cache.group(1) == "/opt/trtserve/cache"


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_images_install_pinned_constraints(flavour: str) -> None:
    """Each image installs from its constraints file, which pins every package exactly."""
    stage = dockerfile_stages()[flavour if flavour == "gpu" else "cpu-build"]
    assert f"deploy/constraints/constraints-{flavour}.txt" in stage
    lines = (ROOT / "deploy" / "constraints" / f"constraints-{flavour}.txt").read_text().splitlines()
    pins = [ln for ln in lines if ln and not ln.startswith("#")]
    assert len(pins) > 20 and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==\S+", p) for p in pins), pins
