"""deploy/kubernetes/ and deploy/helm/: in sync with their generator, rendered by a real kubectl
kustomize, every object valid against the Kubernetes schemas (offline, kubernetes-validate),
the Prometheus Operator objects against the Operator's CRD models (cloudcoil), the rules
through promtool; the chart linted and rendered by a real helm, equal to the kustomize base."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as operator

from celery_events_exporter.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
KUBECTL = Path(sys.executable).with_name("kubectl")
HELM = Path(sys.executable).with_name("helm")  # scripts/env.sh installs it (deploy/helm/)
CHART = ROOT / "deploy" / "helm" / "celery-events-exporter"
TARGETS = ("base", "overlays/redis", "overlays/rabbitmq")
# The schemas kubernetes-validate ships offline; the manifests use only GA APIs.
KUBERNETES_VERSION = "1.30.0"
OPERATOR_MODELS = {"ServiceMonitor": operator.ServiceMonitor,
                   "PrometheusRule": operator.PrometheusRule}


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("k8s_generate", KUBE / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


generate = _generator()


def render(target: str) -> list[dict[str, Any]]:
    out = subprocess.run([str(KUBECTL), "kustomize", str(KUBE / target)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind]
    return obj


def test_checked_in_manifests_are_what_the_generator_writes() -> None:
    assert generate.stale() == []
    assert subprocess.run([sys.executable, str(KUBE / "generate.py"), "--check"],
                          timeout=120).returncode == 0


def test_check_notices_an_edited_and_a_leftover_file(tmp_path: Path) -> None:
    copy = tmp_path / "deploy"
    shutil.copytree(KUBE, copy / "kubernetes")
    shutil.copytree(CHART, copy / "helm" / CHART.name)
    (copy / "kubernetes" / "base" / "service.yaml").write_text("# edited\n")
    (copy / "kubernetes" / "overlays" / "redis" / "old.yaml").write_text("{}\n")
    (copy / "helm" / CHART.name / "templates" / "service.yaml").unlink()
    assert generate.stale(copy) == [copy / "helm" / CHART.name / "templates" / "service.yaml",
                                    copy / "kubernetes" / "base" / "service.yaml",
                                    copy / "kubernetes" / "overlays" / "redis" / "old.yaml"]


def test_kustomize_renders_every_target(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    kinds = sorted(o["kind"] for o in objects)
    dashboards = len(list((ROOT / "dashboards" / "json").glob("*.json")))
    assert kinds == sorted(["ConfigMap"] * dashboards + [
        "Deployment", "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceMonitor"])


def test_builtin_objects_pass_the_kubernetes_schemas(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    for obj in rendered[1]:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        # strict: a misspelt or misplaced field is an error, not silently ignored.
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validate_rejects_a_misplaced_field() -> None:
    (deployment,) = [o for o in render("base") if o["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def _unknown_fields(given: Any, parsed: Any, path: str = "") -> list[str]:
    """Fields of `given` that the model dropped: pydantic ignores extras, the CRD does not."""
    if isinstance(given, dict):
        missing = [f"{path}.{k}" for k in given if k not in parsed]
        return missing + [m for k in given if k in parsed
                          for m in _unknown_fields(given[k], parsed[k], f"{path}.{k}")]
    if isinstance(given, list):
        return [m for i, (g, p) in enumerate(zip(given, parsed, strict=True))
                for m in _unknown_fields(g, p, f"{path}[{i}]")]
    return []


def operator_errors(obj: dict[str, Any]) -> list[str]:
    model = OPERATOR_MODELS[obj["kind"]]
    try:
        parsed = model.model_validate(obj)
    except pydantic.ValidationError as exc:
        return [str(exc)]
    dumped = json.loads(parsed.model_dump_json(by_alias=True, exclude_unset=True))
    return _unknown_fields(obj, dumped)


def test_operator_objects_pass_the_crd_models(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    for kind in OPERATOR_MODELS:
        assert operator_errors(one(rendered[1], kind)) == [], kind


def test_crd_models_reject_bad_and_unknown_fields() -> None:
    monitor = one(render("base"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert operator_errors(monitor)
    monitor = one(render("base"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scrape_interval"] = "15s"
    assert operator_errors(monitor) == [".spec.endpoints[0].scrape_interval"]


def test_prometheus_rule_passes_promtool_and_matches_alerts(tmp_path: Path) -> None:
    from celery_events_exporter.alerts.rules import RULES_FILE

    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is missing: scripts/test installs it"
    spec = one(render("base"), "PrometheusRule")["spec"]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(spec))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    # The same groups as the rules file the repo ships for plain Prometheus.
    assert spec == yaml.safe_load((ROOT / "alerts" / RULES_FILE).read_text())


def test_dashboards_configmaps_carry_the_shipped_json_for_the_sidecar() -> None:
    maps = [o for o in render("base") if o["kind"] == "ConfigMap"]
    shipped = {p.name: p.read_text() for p in (ROOT / "dashboards" / "json").glob("*.json")}
    got: dict[str, str] = {}
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        got.update(cm["data"])
    assert got == shipped


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def test_deployment_is_ha_non_root_read_only_and_probed(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    objects = rendered[1]
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(objects)
    assert deployment["spec"]["replicas"] == 2
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == \
        deployment["spec"]["selector"]["matchLabels"]
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}


def test_broker_url_and_web_config_come_from_the_secret(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    objects = rendered[1]
    container = _container(objects)
    env = _env(container)
    ref = env["CELERY_EVENTS_EXPORTER_BROKER_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": generate.SECRET, "key": generate.BROKER_URL_KEY}
    web_file = Path(env["CELERY_EVENTS_EXPORTER_WEB_CONFIG_FILE"]["value"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(web_file.parent)]
    volumes = {v["name"]: v for v in one(objects, "Deployment")["spec"]["template"]["spec"]
               ["volumes"]}
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == generate.SECRET
    assert secret["items"] == [{"key": generate.WEB_CONFIG_KEY, "path": web_file.name}]


def test_every_environment_variable_is_an_exporter_flag(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    from celery_events_exporter.brokerargs import env_name as _env_name

    flags = {_env_name(opt) for action in build_parser()._actions
             for opt in action.option_strings if opt.startswith("--")}
    for name in _env(_container(rendered[1])):
        assert name in flags, name


def test_overlays_pick_the_ingest_of_their_broker() -> None:
    for target, ingest in (("overlays/redis", "redis"), ("overlays/rabbitmq", "kombu")):
        env = _env(_container(render(target)))
        assert env["CELERY_EVENTS_EXPORTER_INGEST"]["value"] == ingest
    rabbit = _env(_container(render("overlays/rabbitmq")))
    ref = rabbit["CELERY_EVENTS_EXPORTER_RABBITMQ_MANAGEMENT_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True


def test_service_monitor_scrapes_the_job_the_rules_and_dashboards_select() -> None:
    from celery_events_exporter.alerts.config import RulesConfig

    objects = render("base")
    service, monitor = one(objects, "Service"), one(objects, "ServiceMonitor")
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    assert RulesConfig().job_selector == f'job="{job}"'
    for path in (ROOT / "dashboards" / "json").glob("*.json"):
        variables = json.loads(path.read_text())["templating"]["list"]
        (var,) = [v for v in variables if v["name"] == "job"]
        assert f'job="{job}"' in var["query"], path.name
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert service["spec"]["publishNotReadyAddresses"] is True


# --- the Helm chart ------------------------------------------------------------------------------

def helm(*args: str, tmp: Path) -> str:
    assert HELM.exists(), f"{HELM} is missing: scripts/env.sh installs it (ensure_venv)"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "HELM_CACHE_HOME": str(tmp / "cache"),
           "HELM_CONFIG_HOME": str(tmp / "config"), "HELM_DATA_HOME": str(tmp / "data")}
    out = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def helm_template(tmp: Path, *values: str) -> list[dict[str, Any]]:
    text = helm("template", "cee", str(CHART), *(a for v in values for a in ("--set", v)),
                tmp=tmp)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _by_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_helm_lints_the_chart(tmp_path: Path) -> None:
    out = helm("lint", "--strict", str(CHART), tmp=tmp_path)
    assert "0 chart(s) failed" in out


def test_helm_with_default_values_renders_the_kustomize_base(tmp_path: Path) -> None:
    assert _by_name(helm_template(tmp_path)) == _by_name(render("base"))


def test_helm_values_reach_the_objects(tmp_path: Path) -> None:
    objects = helm_template(tmp_path, "replicaCount=3", "image.repository=registry.local/cee",
                            "image.tag=9.9", "ingest=redis", "secretName=celery-prod",
                            "resources.requests.cpu=200m", "serviceMonitor.enabled=false",
                            "prometheusRule.labels.release=prometheus")
    kinds = [o["kind"] for o in objects]
    assert "ServiceMonitor" not in kinds and "PrometheusRule" in kinds
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    container = _container(objects)
    assert container["image"] == "registry.local/cee:9.9"
    assert container["resources"]["requests"]["cpu"] == "200m"
    env = _env(container)
    assert env["CELERY_EVENTS_EXPORTER_INGEST"]["value"] == "redis"
    assert env["CELERY_EVENTS_EXPORTER_BROKER_URL"]["valueFrom"]["secretKeyRef"]["name"] == \
        "celery-prod"
    assert one(objects, "PrometheusRule")["metadata"]["labels"]["release"] == "prometheus"
    for obj in objects:
        if not obj["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert operator_errors(one(objects, "PrometheusRule")) == []


# --- examples (deploy/kubernetes/examples/: documented, not part of the kustomize base) ---

KEDA_EXAMPLE = KUBE / "examples" / "keda-scaledobject.yaml"


def test_keda_example_is_a_valid_scaled_object_on_the_saturation_rule(tmp_path: Path) -> None:
    obj = yaml.safe_load(KEDA_EXAMPLE.read_text(encoding="utf-8"))
    assert (obj["apiVersion"], obj["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert obj["spec"]["scaleTargetRef"]["name"]
    trigger = obj["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["serverAddress"].startswith("http") and float(meta["threshold"]) > 0
    # Against KEDA's CRD model: a misspelt or misplaced field is an error.
    parsed = keda.ScaledObject.model_validate(obj)
    dumped = json.loads(parsed.model_dump_json(by_alias=True, exclude_unset=True))
    assert _unknown_fields(obj, dumped) == []
    # It reads the recording rule the shipped rules record, and the query parses.
    rules = yaml.safe_load((ROOT / "alerts" / "celery-rules.yml").read_text(encoding="utf-8"))
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    assert any(name in meta["query"] for name in recorded if "saturation" in name), meta
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is missing: scripts/test installs it"
    path = tmp_path / "query.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": [
        {"record": "keda:query:check", "expr": meta["query"]}]}]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    # Scale to zero: it may go to zero, and wakes on any value above 0 (the rule's queue
    # length term, since no worker means no worker series).
    assert obj["spec"]["minReplicaCount"] == 0 and float(meta["activationThreshold"]) == 0


def test_keda_example_is_not_in_the_kustomize_base() -> None:
    base = yaml.safe_load((KUBE / "base" / "kustomization.yaml").read_text(encoding="utf-8"))
    assert not any("examples" in r for r in base["resources"])
    assert all(o["kind"] != "ScaledObject" for o in render("base"))
