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
from celery_events_exporter.alerts import cli, incidents
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
    "CeleryExporterBrokerDisconnected", "CeleryExporterFallingBehind", "CeleryTaskFailing",
    "CeleryTasksDropped", "CeleryQueueStuck", "CeleryExporterAbsent",
} | set(incidents.ALERTS)


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
    assert groups == ["celery.recording", "celery.alerts", incidents.GROUP]


# --- the promtool test files: every alert fires, stays silent, at its for: boundary ---

def load_tests() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, yaml.safe_load(p.read_text(encoding="utf-8")))
            for p in sorted(TESTS_DIR.glob("*.yml"))]


def test_test_files_use_the_checked_in_rules_in_a_fixed_group_order() -> None:
    for path, doc in load_tests():
        assert doc["rule_files"] == [f"../{RULES_FILE}"], path.name
        # Without it promtool evaluates groups in map order and for: boundaries flake.
        order = doc.get("group_eval_order")
        assert order in (["celery.recording", "celery.alerts"],
                         ["celery.recording", "celery.alerts", incidents.GROUP]), path.name


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


def test_worker_down_for_must_fit_the_memory() -> None:
    # The promtool cases prove the shape; this guards the flags: a for: that cannot fire
    # well inside the time the alert remembers a dead worker is refused.
    assert RulesConfig().worker_down_for == "2m"
    with pytest.raises(ValueError, match="worker-down-for"):
        RulesConfig(worker_down_for="5m", worker_down_memory="10m")
    RulesConfig(worker_down_for="5m", worker_down_memory="30m")


@pytest.mark.parametrize("kwargs, flag", [
    ({"objective": 1.0}, "--objective"),
    ({"queue_wait_for": "ten minutes"}, "--queue-wait-for"),
    ({"event_lag_seconds": -1.0}, "--event-lag-seconds"),
    ({"job_selector": '{job="celery"}'}, "--job-selector"),
    ({"cluster_label": "bad-label"}, "--cluster-label"),
    ({"replica_labels": "instance,bad-label"}, "--replica-labels"),
    ({"task_failure_ratio": 1.0}, "--task-failure-ratio"),
    ({"queues": {"reports": {"objective": 1.5}}}, "queues.reports.objective"),
    ({"queues": {"reports": {"objectiv": 0.9}}}, "queues.reports: unknown"),
    ({"tasks": {"t": {"task_failure_ratio": "high"}}}, "tasks.t.task_failure_ratio"),
    ({"tasks": {"t": {"max_runtime_seconds": 0}}},
     "tasks.t.max_runtime_seconds must be a number > 0"),
    ({"tasks": {"t": {"periodic_interval_seconds": -5}}}, "tasks.t.periodic_interval_seconds"),
    ({"ghost_for": "5 minutes"}, "--ghost-for"),
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
    assert 'last_over_time(celery_worker_up{job="workers", env="prod"}[1d])' in text
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
    assert cli.run(parse(["--out", str(tmp_path), "--worker-down-for", "9m",
                          "--worker-down-memory", "15m"])) == 1
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
                  "description": "Worker w1@h (job celery) stopped sending heartbeats or "
                                 "went offline. With grouped worker labels, every node of the "
                                 "group is down. This keeps firing until the worker is back, "
                                 "for up to 1d after the exporter forgot it: silence it if "
                                 "the worker is gone for good.",
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


def run_case(tmp_path: Path, config: str, case: dict[str, Any]) -> subprocess.CompletedProcess:
    """Generate rules from a config file and run one promtool test file against them."""
    (tmp_path / "monitoring.yml").write_text(config, encoding="utf-8")
    assert cli.run(parse(["--out", str(tmp_path), "--config",
                          str(tmp_path / "monitoring.yml")])) == 0
    doc = {"rule_files": [RULES_FILE], "evaluation_interval": "1m",
           "group_eval_order": ["celery.recording", "celery.alerts"], "tests": [case]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return subprocess.run([promtool(), "test", "rules", "test.yml"], capture_output=True,
                          text=True, timeout=120, check=False, cwd=tmp_path)


def firing(alert: str, *labels: str) -> dict[str, Any]:
    """A promql_expr_test: exactly these label sets of `alert` are firing at 10m."""
    return {"expr": f'ALERTS{{alertname="{alert}", alertstate="firing"}}', "eval_time": "10m",
            "exp_samples": [{"labels": f'ALERTS{{alertname="{alert}", alertstate="firing", '
                                       f'{lab}}}', "value": 1} for lab in labels]}


def test_objectives_per_queue_and_task_from_the_config_file(tmp_path: Path) -> None:
    """Reports may fail 20% (objective 90% puts the 1h pair out of reach), default may not;
    one task may fail 70% of the time (its own 90% threshold), the others not over half."""
    ok, ko = "celery_task_succeeded_total", "celery_task_failed_total"

    def series(metric: str, queue: str, name: str, per_minute: int) -> dict[str, str]:
        extra = ', exception="E"' if metric == ko else ""
        return {"series": f'{metric}{{job="celery", instance="e:1", queue="{queue}", '
                          f'name="{name}"{extra}}}', "values": f"0+{per_minute}x20"}

    config = ("queues:\n  reports: {objective: 0.9}\n"
              "tasks:\n  proj.flaky: {task_failure_ratio: 0.9}\n"
              "task_failure_for: 1m\n")
    case = {
        "interval": "1m",
        "input_series": [
            # 20% failing on both queues: above 14.4 x 1% (default), below 14.4 x 10%.
            series(ok, "default", "proj.add", 80), series(ko, "default", "proj.add", 20),
            series(ok, "reports", "proj.report", 80), series(ko, "reports", "proj.report", 20),
            # 70% failing: above the default 50%, below proj.flaky's 90%.
            series(ok, "default", "proj.flaky", 3), series(ko, "default", "proj.flaky", 7),
            series(ok, "default", "proj.other", 3), series(ko, "default", "proj.other", 7),
        ],
        "promql_expr_test": [
            firing("CeleryTaskFailureBudgetBurn",
                   'job="celery", long="1h", queue="default", severity="critical", '
                   'short="5m"'),
            firing("CeleryTaskFailing",
                   'job="celery", name="proj.other", queue="default", severity="warning"'),
        ],
    }
    proc = run_case(tmp_path, config, case)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The same case against the defaults: reports burns and proj.flaky fails too.
    proc = run_case(tmp_path, "task_failure_for: 1m\n", case)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and 'queue="reports"' in out and "proj.flaky" in out, out


def test_incident_thresholds_from_the_config_file(tmp_path: Path) -> None:
    """The file's defaults and tasks: drive the incident alerts: a nightly task has its own
    runtime limit and schedule, the default runtime limit and the oldest-waiting threshold
    are lowered; against the shipped defaults none of these fires."""
    config = ("max_runtime_seconds: 300\noldest_waiting_seconds: 120\n"
              "oldest_waiting_for: 1m\n"
              "tasks:\n  proj.nightly: {max_runtime_seconds: 120, "
              "periodic_interval_seconds: 120}\n"
              "  proj.hourly: {periodic_interval_seconds: 120}\n")
    age = "celery_task_oldest_running_age_seconds"
    case = {
        "interval": "1m",
        "input_series": [
            # Both started at 0 and still run: 600 s at 10m.
            {"series": f'{age}{{job="celery", instance="e:1", name="proj.nightly", '
                       f'queue="default"}}', "values": "0+60x20"},
            {"series": f'{age}{{job="celery", instance="e:1", name="proj.add", '
                       f'queue="default"}}', "values": "0+60x20"},
            # Last published at 0, never since.
            {"series": 'celery_task_last_sent_timestamp_seconds{job="celery", instance="e:1", '
                       'name="proj.nightly"}', "values": "0x20"},
            # Also silent since 0, but the exporter reads its beat entry, which says it is not
            # due yet (an hourly crontab): the per-name fallback stays out of it.
            {"series": 'celery_task_last_sent_timestamp_seconds{job="celery", instance="e:1", '
                       'name="proj.hourly"}', "values": "0x20"},
            {"series": 'celery_periodic_task_overdue{job="celery", instance="e:1", '
                       'entry="hourly", name="proj.hourly"}', "values": "0x20"},
            # A message waits since 0 and nothing starts.
            {"series": 'celery_queue_oldest_waiting_age_seconds{job="celery", instance="e:1", '
                       'queue="reports"}', "values": "0+60x20"},
        ],
        "promql_expr_test": [
            firing("CeleryTaskRunningTooLong",
                   'job="celery", name="proj.add", queue="default", severity="warning"',
                   'job="celery", name="proj.nightly", queue="default", severity="warning"'),
            firing("CeleryPeriodicTaskOverdue",
                   'job="celery", name="proj.nightly", severity="warning"'),
            firing("CeleryQueueOldestWaitingHigh",
                   'job="celery", queue="reports", severity="critical"'),
        ],
    }
    proc = run_case(tmp_path, config, case)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The shipped defaults: 600 s is under 3600 s and not over 600 s; no schedule for the
    # nightly task.
    proc = run_case(tmp_path, "", case)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    for alert in ("CeleryTaskRunningTooLong", "CeleryPeriodicTaskOverdue",
                  "CeleryQueueOldestWaitingHigh"):
        assert alert in out, (alert, out)


def test_every_worker_facing_alert_is_tested_with_grouped_worker_labels() -> None:
    """With --worker-label host|regex a worker series is a group (no `name@host`), whose up
    counts live nodes: each alert that reads a worker gauge has a case fed like that."""
    worker_metrics = {x.full() for x in (*m.WORKER_GAUGES, m.WORKER_POOL_PROCESSES)}
    rules = rules_of(checked_in(), "expr")
    recorded = {r["record"] for r in rules if "record" in r
                and metric_names(r["expr"]) & worker_metrics}
    facing = {r["alert"] for r in rules if "alert" in r
              and metric_names(r["expr"]) & (worker_metrics | recorded)}
    assert {"CeleryWorkerDown", "CeleryNoWorkers", "CeleryPrefetchBacklog"} <= facing
    tested: set[str] = set()
    for _, doc in load_tests():
        for group in doc["tests"]:
            grouped = [s for s in group.get("input_series", [])
                       if re.match(r'celery_worker_\w+\{.*worker="[^"@]+"', s["series"])]
            if grouped:
                tested |= {c["alertname"] for c in group.get("alert_rule_test", [])}
    assert facing <= tested, f"no grouped-label case for {sorted(facing - tested)}"


def test_example_config_generates_valid_rules_with_its_overrides(tmp_path: Path) -> None:
    example = ROOT / "alerts" / "monitoring.example.yml"
    assert cli.run(parse(["--out", str(tmp_path), "--config", str(example)])) == 0
    text = (tmp_path / RULES_FILE).read_text(encoding="utf-8")
    assert 'queue="reports"' in text and "(1 - 0.95)" in text and "> 600" in text
    assert 'name="tasks.call_flaky_service"' in text and "> 0.8" in text
    assert 'name="tasks.slow_report"}) > 660' in text and "> 3600" in text
    assert 'name="tasks.resend_welcome_emails"})) > 90' in text
    proc = subprocess.run([promtool(), "check", "rules", str(tmp_path / RULES_FILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
