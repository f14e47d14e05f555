"""Alert and recording rules: in sync with the generator, valid, unit-tested, documented."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_events_exporter import metrics as m
from celery_events_exporter.alerts import cli
from celery_events_exporter.alerts.config import RulesConfig, seconds
from celery_events_exporter.alerts.promql import metric_names
from celery_events_exporter.alerts.rules import RULES_FILE, build, render

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / RULES_FILE
TESTS_DIR = ROOT / "alerts" / "tests"
RUNBOOK = ROOT / "docs" / "runbook.md"
ALERTMANAGER_EXAMPLE = ROOT / "alerts" / "alertmanager.example.yml"
RUNBOOK_URL = ("https://github.com/celery-events-exporter/celery-events-exporter/blob/main/"
               "docs/runbook.md")
REGENERATE = ".venv/bin/python -m celery_events_exporter.alerts --out alerts"

EXPECTED_ALERTS = {
    "CeleryTaskFailureBudgetBurn", "CeleryTaskQueueWaitHigh", "CeleryPrefetchBacklog",
    "CeleryQueueBacklogGrowing", "CeleryQueueNoConsumers", "CeleryWorkerDown",
    "CeleryNoWorkers", "CeleryTaskEventsMissing", "CeleryExporterDown",
    "CeleryExporterBrokerDisconnected", "CeleryExporterFallingBehind",
}


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found on PATH: install it (Debian/Ubuntu: apt-get install "
                    f"{package}); scripts/test does it")
    return path


def promtool() -> str:
    return tool("promtool", "prometheus")


def rules_of(data: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for g in data["groups"] for r in g["rules"] if kind in r]


def checked_in() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return data


def test_checked_in_rules_match_generator() -> None:
    assert RULES.read_text(encoding="utf-8") == render(), (
        f"{RULES.relative_to(ROOT)} is out of date with alerts/*.py; regenerate it with "
        f"`{REGENERATE}` and commit the result")


def test_promtool_check_rules() -> None:
    proc = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass() -> None:
    files = sorted(TESTS_DIR.glob("*.yml"))
    assert files
    proc = subprocess.run([promtool(), "test", "rules", *map(str, files)], capture_output=True,
                          text=True, timeout=300, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_exactly_the_expected_alerts() -> None:
    assert {r["alert"] for r in rules_of(checked_in(), "alert")} == EXPECTED_ALERTS


def test_every_alert_is_complete() -> None:
    for rule in rules_of(checked_in(), "alert"):
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        ann = rule["annotations"]
        assert set(ann) >= {"summary", "description", "runbook_url"}, name
        assert ann["runbook_url"] == f"{RUNBOOK_URL}#{name.lower()}", name
        # The description must say where the problem is.
        assert "$labels." in ann["description"], name
        assert seconds(rule["for"]) > 0, f"{name}: a for: lets the boundary be tested"


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for the document's headings (duplicates get -1, -2...)."""
    seen: dict[str, int] = defaultdict(int)
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return anchors


def test_runbook_has_a_heading_per_runbook_url() -> None:
    anchors = github_anchors(RUNBOOK.read_text(encoding="utf-8"))
    for rule in rules_of(checked_in(), "alert"):
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"docs/runbook.md has no heading for #{anchor}"


def test_github_anchor_rules() -> None:
    doc = "# Runbook\n## CeleryWorkerDown\n```\n## not a heading\n```\n## A b, c!\n## A b, c!\n"
    assert github_anchors(doc) == {"runbook", "celeryworkerdown", "a-b-c", "a-b-c-1"}


def known_names(data: dict[str, Any], prefix: str = m.DEFAULT_PREFIX) -> set[str]:
    names = {x.full(prefix) for x in m.ALL}
    names |= {x.full(prefix) + s for x in m.HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
    names |= {r["record"] for r in rules_of(data, "record")}
    return names | {"up"}  # Prometheus' own scrape health


def test_metric_name_extraction() -> None:
    expr = ('sum by (job, le) (rate(a_bucket{x="y", z=~"a|b"}[5m] offset 1h)) / on (job) '
            'group_left () b:rec:rate5m > bool 1e3 and {__name__=~"c_total|d_total", j="k"} '
            'or label_replace(time() - e, "r", "v", "", "") unless vector(0)')
    assert metric_names(expr) == {"a_bucket", "b:rec:rate5m", "c_total", "d_total", "e"}
    assert metric_names('label_values(f_info{job=~"$job"}, worker)') == {"f_info"}


@pytest.mark.parametrize("cfg", [RulesConfig(),
                                 RulesConfig(prefix="myapp", cluster_label="cluster")],
                         ids=["default", "prefix-and-cluster"])
def test_every_metric_name_is_in_the_catalogue(cfg: RulesConfig) -> None:
    data = build(cfg)
    known = known_names(data, cfg.prefix)
    for rule in rules_of(data, "expr"):
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown {unknown}"


def test_recording_rule_names_are_level_metric_operation() -> None:
    for rule in rules_of(checked_in(), "record"):
        assert re.fullmatch(r"[a-z][a-z_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*", rule["record"]), \
            rule["record"]


def test_recordings_come_before_the_alerts_that_read_them() -> None:
    groups = [g["name"] for g in checked_in()["groups"]]
    assert groups == ["celery.recording", "celery.alerts"]


# --- the promtool test files: every alert fires, stays silent, at its for: boundary ---

def load_tests() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, yaml.safe_load(p.read_text(encoding="utf-8")))
            for p in sorted(TESTS_DIR.glob("*.yml"))]


def test_test_files_use_the_checked_in_rules_in_a_fixed_group_order() -> None:
    for path, doc in load_tests():
        assert doc["rule_files"] == [f"../{RULES_FILE}"], path.name
        # Without it promtool evaluates groups in map order and for: boundaries flake.
        assert doc.get("group_eval_order") == ["celery.recording", "celery.alerts"], path.name


def test_each_alert_has_a_firing_case_at_the_for_boundary_and_a_silent_case() -> None:
    alerts = rules_of(checked_in(), "alert")
    fires: dict[tuple[str, str], list[str]] = defaultdict(list)  # (alert, severity) -> cases
    silent: dict[str, list[str]] = defaultdict(list)
    for path, doc in load_tests():
        step = seconds(doc.get("evaluation_interval", "1m"))
        for group in doc["tests"]:
            case = f"{path.name}: {group.get('name', '?')}"
            by_alert: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for check in group.get("alert_rule_test", []):
                by_alert[check["alertname"]].append(check)
            for name, checks in by_alert.items():
                firing = [c for c in checks if c.get("exp_alerts")]
                if not firing:
                    silent[name].append(case)
                    continue
                first = min(firing, key=lambda c: seconds(c["eval_time"]))
                t = seconds(first["eval_time"])
                before = [c for c in checks if seconds(c["eval_time"]) == t - step]
                assert before and not before[0].get("exp_alerts"), (
                    f"{case}: {name} first fires at {first['eval_time']} but is not checked "
                    f"silent one evaluation ({step:g}s) earlier")
                for exp in first["exp_alerts"]:
                    assert set(exp.get("exp_annotations", {})) == {
                        "summary", "description", "runbook_url"}, case
                    fires[(name, exp["exp_labels"]["severity"])].append(case)
    for rule in alerts:
        key = (rule["alert"], rule["labels"]["severity"])
        assert fires[key], f"no promtool case where {key} fires"
        assert silent[rule["alert"]], f"no promtool case where {rule['alert']} stays silent"


def test_worker_down_fires_within_the_exporter_retention() -> None:
    # The promtool case proves the shape; this guards the flag: a for: that cannot fire
    # before the exporter drops a dead worker's series is refused at generation time.
    assert RulesConfig().worker_down_for == "2m"
    with pytest.raises(ValueError, match="worker-down-for"):
        RulesConfig(worker_down_for="5m")
    RulesConfig(worker_down_for="5m", worker_down_retention="30m")


@pytest.mark.parametrize("kwargs, flag", [
    ({"objective": 1.0}, "--objective"),
    ({"queue_wait_for": "ten minutes"}, "--queue-wait-for"),
    ({"event_lag_seconds": -1.0}, "--event-lag-seconds"),
    ({"job_selector": '{job="celery"}'}, "--job-selector"),
    ({"cluster_label": "bad-label"}, "--cluster-label"),
])
def test_invalid_config_names_the_flag(kwargs: dict[str, Any], flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        RulesConfig(**kwargs)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["rules", *argv])


def test_cli_writes_rules_with_custom_thresholds(tmp_path: Path) -> None:
    args = parse(["--out", str(tmp_path), "--objective", "0.995", "--queue-wait-p95-seconds",
                  "120", "--job-selector", 'job="workers", env="prod"', "--cluster-label",
                  "cluster"])
    assert cli.run(args) == 0
    text = (tmp_path / RULES_FILE).read_text(encoding="utf-8")
    assert "(14.4 * (1 - 0.995))" in text
    assert "> 120\n" in text
    assert 'celery_worker_up{job="workers", env="prod"} == 0' in text
    assert "cluster_job_queue:celery_task_failure:ratio_rate5m" in text
    assert "on (cluster, job)" in text
    proc = subprocess.run([promtool(), "check", "rules", str(tmp_path / RULES_FILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # --check passes on what was just written and fails once thresholds differ.
    assert cli.run(parse(["--out", str(tmp_path), "--check", "--objective", "0.995",
                          "--queue-wait-p95-seconds", "120", "--job-selector",
                          'job="workers", env="prod"', "--cluster-label", "cluster"])) == 0
    assert cli.run(parse(["--out", str(tmp_path), "--check"])) == 1


def test_cli_rejects_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(parse(["--out", str(tmp_path), "--worker-down-for", "9m"])) == 1
    assert "--worker-down-for" in capsys.readouterr().err
    assert not (tmp_path / RULES_FILE).exists()


def test_cli_check_on_the_repository() -> None:
    assert cli.run(parse(["--out", str(ROOT / "alerts"), "--check"])) == 0


def test_alertmanager_example_is_valid_and_names_real_alerts() -> None:
    proc = subprocess.run([tool("amtool", "prometheus-alertmanager"), "check-config",
                           str(ALERTMANAGER_EXAMPLE)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    example = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
    # The labels each alert really carries, from the promtool cases' exact expectations.
    carried: dict[str, set[str]] = {}
    for _, doc in load_tests():
        for group in doc["tests"]:
            for check in group.get("alert_rule_test", []):
                for exp in check.get("exp_alerts") or []:
                    keys = set(exp["exp_labels"])
                    name = check["alertname"]
                    carried[name] = carried.get(name, keys) & keys
    for rule in example["inhibit_rules"]:
        sides = []
        for key in ("source_matchers", "target_matchers"):
            names: set[str] = set()
            for matcher in rule[key]:
                label, _, value = re.match(r'(\w+)(=~|=)"(.*)"', matcher).groups()
                if label == "alertname":
                    names = set(value.split("|"))
            assert names and names <= EXPECTED_ALERTS, rule[key]
            sides.append(names)
        for name in set().union(*sides):
            missing = set(rule["equal"]) - carried[name]
            assert not missing, f"{name} lacks {missing}: the inhibition would never match"


def test_opt_in_worker_down_on_clean_shutdown(tmp_path: Path) -> None:
    """With the flag a worker that said goodbye pages too; by default only a silent one."""
    down = "celery_worker_up{job=\"celery\", worker=\"w1@h\"}"
    clean = "celery_worker_clean_shutdown{job=\"celery\", worker=\"w1@h\"}"
    case = {
        "rule_files": [RULES_FILE],
        "evaluation_interval": "15s",
        "group_eval_order": ["celery.recording", "celery.alerts"],
        "tests": [{
            "interval": "15s",
            "input_series": [{"series": down, "values": "1x3 0x20"},
                             {"series": clean, "values": "0x3 1x20"}],
            "alert_rule_test": [{"eval_time": "3m", "alertname": "CeleryWorkerDown",
                                 "exp_alerts": "EXPECTED"}],
        }],
    }
    fired = [{"exp_labels": {"severity": "warning", "job": "celery", "worker": "w1@h"},
              "exp_annotations": {
                  "summary": "Celery worker w1@h is down.",
                  "description": "Worker w1@h (job celery, exporter ) stopped sending "
                                 "heartbeats or went offline. The exporter forgets it 10m "
                                 "after that, which resolves this alert.",
                  "runbook_url": f"{RUNBOOK_URL}#celeryworkerdown"}}]
    for flag, expected in (("--worker-down-on-clean-shutdown", fired),
                           ("--no-worker-down-on-clean-shutdown", [])):
        out = tmp_path / flag.strip("-")
        assert cli.run(parse(["--out", str(out), flag])) == 0
        case["tests"][0]["alert_rule_test"][0]["exp_alerts"] = expected
        (out / "test.yml").write_text(yaml.safe_dump(case), encoding="utf-8")
        proc = subprocess.run([promtool(), "test", "rules", "test.yml"], capture_output=True,
                              text=True, timeout=60, check=False, cwd=out)
        assert proc.returncode == 0, flag + "\n" + proc.stdout + proc.stderr
