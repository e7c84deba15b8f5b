"""deploy/ and Dockerfile: manifests parse, and every metric, env var, port and command they name
exists in the server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from server.cli.main import SUBCOMMANDS
from server.metrics.server_metrics import ServerMetrics

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
HELM_TEMPLATES = DEPLOY / "helm" / "trtserve" / "templates"
RULES = DEPLOY / "prometheus" / "rules.yaml"
DASHBOARD = DEPLOY / "grafana" / "trtserve.json"
_METRIC = re.compile(r"\b((?:nv|trtserve)_[A-Za-z0-9_]+)")
_SELECTOR = re.compile(r"\b((?:nv|trtserve)_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
_EXACT = re.compile(r'(\w+)="([^"]*)"')  # `=` only: `!=` and `=~` do not match
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
ENGINE_ENV = {"TRTSERVE_CACHE_DIR"}  # read by engine/cache.py, not by ServerSettings


def plain_yaml_files() -> list[Path]:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    return [f for f in files if HELM_TEMPLATES not in f.parents]


def load_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in plain_yaml_files():
        for doc in load_docs(path):
            if isinstance(doc, dict) and "kind" in doc:
                yield path, doc


def exposition_series() -> list[tuple[str, dict[str, str]]]:
    body, _ = ServerMetrics(["ensemble"], registry=CollectorRegistry()).exposition()
    series = []
    for line in body.decode().splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            series.append((match.group(1), dict(_LABEL.findall(match.group(2) or ""))))
    return series


def rule_exprs() -> list[str]:
    return [r["expr"] for g in load_docs(RULES)[0]["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def test_every_yaml_parses() -> None:
    """Each YAML under deploy/ (Helm templates aside) loads and each k8s object names its kind."""
    files = plain_yaml_files()
    assert len(files) >= 8, files
    for path in files:
        docs = load_docs(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), path
            if "kind" in doc:
                assert doc.get("apiVersion") and doc.get("metadata", {}).get("name"), path


@pytest.mark.parametrize("template", sorted(HELM_TEMPLATES.glob("*")), ids=lambda p: p.name)
def test_helm_template_blocks_balance(template: Path) -> None:
    """Every `{{ if/with/range/define }}` has its `{{ end }}`, and actions are closed."""
    text = template.read_text()
    assert text.count("{{") == text.count("}}"), template
    opened = len(re.findall(r"{{-?\s*(?:if|with|range|define)\b", text))
    closed = len(re.findall(r"{{-?\s*end\s*-?}}", text))
    assert opened == closed, template


def test_rules_structure() -> None:
    """rules.yaml is a Prometheus rule file with the four alerts the runbook expects."""
    groups = load_docs(RULES)[0]["groups"]
    alerts = {}
    for group in groups:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]
            alerts[rule["alert"]] = rule
    expected = {"HighErrorRate", "KVCacheNearFull", "QueueSaturated", "NoProgress"}
    assert {f"Trtserve{a}" for a in expected} <= set(alerts)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH (make tools)")
def test_promtool_accepts_rules() -> None:
    """`promtool check rules` parses every PromQL expression and template."""
    proc = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_referenced_metrics_exist(source: str) -> None:
    """Every metric name and exact label value used in PromQL appears in ServerMetrics' output."""
    exprs = rule_exprs() if source == "rules" else dashboard_exprs()
    series = exposition_series()
    names = {name for name, _ in series}
    used = {m for e in exprs for m in _METRIC.findall(e)}
    assert used, "no metrics referenced"
    assert not used - names, f"unknown metrics in {source}: {sorted(used - names)}"
    for expr in exprs:
        for metric, matchers in _SELECTOR.findall(expr):
            for label, want in _EXACT.findall(matchers):
                if "$" in want:
                    continue
                found = any(n == metric and lab.get(label) == want for n, lab in series)
                assert found, f"{source}: no series {metric}{{{label}={want!r}}}"


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Deployment":
        return obj["spec"]["template"]["spec"]["containers"]
    if obj["kind"] == "ServingRuntime":
        return obj["spec"]["containers"]
    return []


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_deployments_probe_and_drain() -> None:
    """Probes hit the KServe health routes; the grace period covers preStop + drain + 5 s."""
    deployments = [o for _, o in k8s_objects() if o["kind"] == "Deployment"]
    assert len(deployments) >= 2
    for dep in deployments:
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert "startupProbe" in container
        assert container["resources"]["requests"]
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        drain = float(_env(container)["TRTSERVE_DRAIN_TIMEOUT"])
        assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain + 5
        assert pod["securityContext"]["runAsNonRoot"] is True
    gpu = [d for d in deployments if "gpu" in d["metadata"]["name"]]
    assert gpu, "no GPU variant"
    (container,) = gpu[0]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1


def test_service_ports() -> None:
    """The Service exposes http 8000 and metrics 8002, the server's default ports."""
    settings = pytest.importorskip("server.settings").ServerSettings
    services = [o for _, o in k8s_objects() if o["kind"] == "Service"]
    assert services
    ports = {p["name"]: p["port"] for p in services[0]["spec"]["ports"]}
    assert ports == {
        "http": settings.model_fields["port"].default,
        "metrics": settings.model_fields["metrics_port"].default,
    }


def test_env_vars_are_server_settings() -> None:
    """Every TRTSERVE_* variable in the manifests and chart is a real ServerSettings field."""
    settings = pytest.importorskip("server.settings").ServerSettings
    fields = {f"TRTSERVE_{name.upper()}" for name in settings.model_fields}
    texts = [p.read_text() for p in DEPLOY.rglob("*.yaml")] + [(ROOT / "Dockerfile").read_text()]
    used = {v for text in texts for v in re.findall(r"\bTRTSERVE_[A-Z_]+\b", text)}
    assert used, "no TRTSERVE_ variables found"
    assert not used - fields - ENGINE_ENV, sorted(used - fields - ENGINE_ENV)


def test_dockerfile_matches_server() -> None:
    """Base image, non-root user, ports, health check and commands all exist in the server."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", text, re.MULTILINE)
    assert "ARG PYTHON_IMAGE=python:3.12-slim" in text
    assert re.search(r"^EXPOSE 8000 8002$", text, re.MULTILINE)
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "/v2/health/live" in text
    # the default command itself: tests/deploy/test_container_command.py
    commands = set(re.findall(r"^RUN trtserve ([a-z]+)\b", text, re.MULTILINE)) | {"serve"}
    assert "prepare" in commands
    assert commands <= set(SUBCOMMANDS), commands - set(SUBCOMMANDS)
    for copied in re.findall(r"^COPY (?!--)(\S+) ", text, re.MULTILINE):
        if "[" not in copied:
            assert (ROOT / copied).exists(), f"Dockerfile copies missing {copied}"
