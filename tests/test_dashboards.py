"""Dashboards: in sync with the sources, valid PromQL over catalogue metrics, uploadable."""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_events_exporter import metrics as m
from celery_events_exporter.alerts.config import RulesConfig
from celery_events_exporter.alerts.promql import metric_names
from celery_events_exporter.dashboards import (
    Options,
    build_all,
    cli,
    panel_queries,
    render_all,
    upload,
)
from celery_events_exporter.dashboards.generate import JSON_DIR
from celery_events_exporter.dashboards.queries import variable_queries

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = ".venv/bin/python -m celery_events_exporter.dashboards --out dashboards/json"
UIDS = {
    "celery-overview.json": "celery-overview",
    "celery-tasks.json": "celery-tasks",
    "celery-workers.json": "celery-workers",
    "celery-queues.json": "celery-queues",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool not found on PATH: install Prometheus' promtool "
                    "(Debian/Ubuntu: apt-get install prometheus); scripts/test does it")
    return path


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop(0)
        yield panel
        stack[:0] = panel.get("panels") or []


# --- generated JSON ---

@pytest.mark.parametrize("name", sorted(UIDS))
def test_checked_in_json_matches_sources(name: str) -> None:
    path = JSON_DIR / name
    assert path.is_file(), f"missing {path}; generate it with `{REGENERATE}`"
    assert path.read_text(encoding="utf-8") == render_all()[name], (
        f"dashboards/json/{name} is out of date with dashboards/*.py; regenerate with "
        f"`{REGENERATE}` and commit the result")


def test_no_stray_json_files() -> None:
    assert {p.name for p in JSON_DIR.glob("*.json")} == set(UIDS)


def test_json_is_deterministic_and_formatted() -> None:
    first, second = render_all(), render_all()
    assert first == second
    for text in first.values():
        assert text.endswith("}\n")
        data = json.loads(text)
        assert text == json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_stable_unique_uids_and_titles() -> None:
    dashboards = build_all()
    assert {name: d["uid"] for name, d in dashboards.items()} == UIDS
    titles = [d["title"] for d in dashboards.values()]
    assert len(set(titles)) == len(titles)
    assert all(d["id"] is None for d in dashboards.values())  # Grafana assigns ids


def test_datasource_variable_everywhere() -> None:
    for name, d in build_all(Options(datasource="Mimir")).items():
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["datasource"]["current"]["value"] == "Mimir"
        for panel in panels(d):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"], (name, panel["title"])
        for var in variables.values():
            if var["type"] == "query":
                assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_expected_variables() -> None:
    want = {
        "celery-overview.json": ["datasource", "job", "instance"],
        "celery-tasks.json": ["datasource", "job", "instance", "queue", "task"],
        "celery-workers.json": ["datasource", "job", "instance", "worker"],
        "celery-queues.json": ["datasource", "job", "instance", "queue"],
    }
    for name, d in build_all().items():
        assert [v["name"] for v in d["templating"]["list"]] == want[name]
    with_cluster = build_all(Options(cluster_label="cluster"))
    for d in with_cluster.values():
        assert [v["name"] for v in d["templating"]["list"]][:3] == ["datasource", "cluster", "job"]


def test_panels_fit_the_grid_without_overlap() -> None:
    for name, d in build_all().items():
        cells: set[tuple[int, int]] = set()
        for panel in panels(d):
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (name, panel["title"])
            covered = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                       for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not cells & covered, f"{name}: {panel['title']} overlaps another panel"
            cells |= covered
        ids = [p["id"] for p in panels(d)]
        assert len(ids) == len(set(ids)), name


def test_every_panel_has_a_query_title_and_description() -> None:
    for name, d in build_all().items():
        for panel in panels(d):
            if panel["type"] == "row":
                continue
            assert panel["title"] and panel["description"], (name, panel["title"])
            assert [t["expr"] for t in panel["targets"] if t["expr"]], (name, panel["title"])


def test_latency_quantiles_show_exemplars() -> None:
    """Histogram buckets carry task ids (OpenMetrics exemplars): every quantile graph asks
    Grafana to show them, and nothing else does."""
    seen = 0
    for name, d in build_all().items():
        for panel in panels(d):
            for t in panel.get("targets", []):
                quantile = "histogram_quantile(" in t["expr"] and not t.get("instant")
                assert t.get("exemplar", False) is quantile, (name, panel["title"], t["expr"])
                seen += quantile
    assert seen >= 3


# --- PromQL ---

def all_expressions(dashboards: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for name, d in dashboards.items():
        out += [(f"{name}: {title}", expr) for title, expr in panel_queries(d)]
        out += [(f"{name}: ${var}", query) for var, query in variable_queries(d)
                if query.startswith("label_values(")]
    return out


def known_names(prefix: str) -> set[str]:
    names = {x.full(prefix) for x in m.ALL}
    names |= {x.full(prefix) + s for x in m.HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
    return names | {"up"}  # Prometheus' own scrape health of the exporter job


@pytest.mark.parametrize("opts", [Options(), Options(prefix="myapp", cluster_label="cluster")],
                         ids=["default", "prefix-and-cluster"])
def test_every_metric_name_is_in_the_catalogue(opts: Options) -> None:
    known = known_names(opts.prefix)
    used: set[str] = set()
    for where, expr in all_expressions(build_all(opts)):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert not names - known, f"{where}: unknown metric(s) {names - known} in {expr!r}"
        used |= names
    # Every catalogue metric appears on some dashboard.
    base = used | {n.rsplit("_", 1)[0] for n in used if n.endswith(("_bucket", "_sum", "_count"))}
    assert {x.full(opts.prefix) for x in m.ALL} - base == set()


def test_every_query_is_scoped_to_the_exporter_job() -> None:
    opts = Options(cluster_label="cluster")
    for d in build_all(opts).values():
        for panel in panels(d):
            for target in panel.get("targets", []):
                for selector in re.findall(r"\{[^}]*\}", target["expr"]):
                    assert 'job="celery"' in selector and 'job=~"$job"' in selector, selector
                    assert 'cluster=~"$cluster"' in selector, selector
                    assert 'instance=~"$instance"' in selector, selector


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses recording rule expressions: a cheap PromQL syntax check without a
    # running Prometheus. Variables are substituted the way the e2e test will.
    values = {"job": "celery", "queue": "celery", "task": "proj.tasks.add",
              "worker": "celery@host1", "cluster": "eu", "instance": "exporter:9540"}
    rules = []
    for i, (where, expr) in enumerate(all_expressions(build_all(Options(cluster_label="c")))):
        if expr.startswith("label_values("):
            expr = expr[len("label_values("):].rsplit(",", 1)[0]
        expr = re.sub(r"\$(\w+)", lambda mt: values.get(mt.group(1), "1m"), expr)
        rules.append({"record": f"dashboard_query_{i}", "expr": expr, "labels": {"at": where}})
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}),
                    encoding="utf-8")
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_panel_queries_substitutes_variables() -> None:
    overview = build_all()["celery-overview.json"]
    queries = panel_queries(overview)
    titles = [t for t, _ in queries]
    assert "Task throughput by state" in titles and "Exporter" in titles
    for _, expr in queries:
        assert "$" not in expr, expr
        assert "[1m]" in expr or "rate(" not in expr

    tasks = build_all()["celery-tasks.json"]
    picked = panel_queries(tasks, variables={"queue": "celery", "task": ["a.b", "c"],
                                             "__rate_interval": "2m"})
    # Every task filter gets both values; the queue filter is on every metric with a queue
    # label (celery_task_last_sent_timestamp_seconds and the periodic entries have `name`
    # only).
    assert all(r'name=~"(a\.b|c)"' in e for t, e in picked if "name=~" in e)
    assert all('queue=~"celery"' in e for t, e in picked
               if "name=~" in e and "last_sent" not in e and "periodic_" not in e)
    assert any("[2m]" in e for _, e in picked)
    assert all('job=~".*"' in e for _, e in picked)  # "All" -> allValue
    assert all('instance=~".*"' in e for _, e in picked)


def test_panel_queries_refuses_unknown_variables() -> None:
    d = {"templating": {"list": []},
         "panels": [{"title": "x", "targets": [{"expr": 'up{job=~"$nope"}'}]}]}
    with pytest.raises(KeyError, match="nope"):
        panel_queries(d)


def test_prefix_option_applies_everywhere() -> None:
    for _, expr in all_expressions(build_all(Options(prefix="myapp"))):
        assert "celery_" not in expr, expr


@pytest.mark.parametrize("kwargs", [{"cluster_label": "bad-label"}, {"prefix": "1x"},
                                    {"job_selector": '{job="celery"}'}])
def test_invalid_options(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Options(**kwargs)


def stat_thresholds(dashboard: dict[str, Any], title: str) -> list[dict[str, Any]]:
    panel = next(p for p in panels(dashboard) if p["title"] == title)
    steps: list[dict[str, Any]] = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return steps


def test_thresholds_come_from_the_rules_config() -> None:
    rules = RulesConfig(objective=0.95, queue_wait_p95_seconds=120.0,
                        queue_length_threshold=500.0, task_failure_ratio=0.3)
    built = build_all(Options.from_rules(rules))
    overview, tasks = built["celery-overview.json"], built["celery-tasks.json"]
    assert stat_thresholds(overview, "Success ratio")[-1] == {"color": "green", "value": 0.95}
    assert stat_thresholds(overview, "Queue wait p95 (worst queue)")[-1]["value"] == 120
    assert stat_thresholds(overview, "Messages queued")[-1]["value"] == 500
    assert stat_thresholds(tasks, "Failure ratio by task")[-1]["value"] == 0.3
    # The shipped dashboards draw the shipped rules' defaults.
    default = build_all()["celery-overview.json"]
    assert stat_thresholds(default, "Success ratio")[-1]["value"] == RulesConfig().objective


def test_one_config_file_drives_rules_and_dashboards(tmp_path: Path) -> None:
    from celery_events_exporter.alerts import cli as rules_cli

    config = tmp_path / "monitoring.yml"
    config.write_text("objective: 0.97\nqueue-wait-p95-seconds: 90\njob_selector: job=\"w\"\n"
                      "queues:\n  reports: {objective: 0.9}\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    rules_cli.register(parser.add_subparsers(dest="command", required=True))
    assert rules_cli.run(parser.parse_args(["rules", "--out", str(tmp_path), "--config",
                                            str(config)])) == 0
    rules = (tmp_path / "celery-rules.yml").read_text(encoding="utf-8")
    assert "(1 - 0.97)" in rules and "(1 - 0.9)" in rules and "> 90\n" in rules
    assert cli.run(parse(["--out", str(tmp_path), "--config", str(config)])) == 0
    overview = json.loads((tmp_path / "celery-overview.json").read_text(encoding="utf-8"))
    assert stat_thresholds(overview, "Success ratio")[-1]["value"] == 0.97
    assert stat_thresholds(overview, "Queue wait p95 (worst queue)")[-1]["value"] == 90
    assert all('job="w"' in expr for _, expr in panel_queries(overview))
    bad = tmp_path / "bad.yml"
    bad.write_text("objectiv: 0.9\n", encoding="utf-8")
    assert cli.run(parse(["--out", str(tmp_path), "--config", str(bad)])) == 1


def test_no_blank_legend_from_zero_padding_inside_by() -> None:
    # `sum by (name) (...) or on () vector(0)` adds a series without `name`: a blank entry.
    for where, expr in all_expressions(build_all()):
        if "vector(0)" in expr:
            padded = expr.split(" or ")[0]
            assert not re.match(r"^\w+ by \(", padded), (where, expr)


def test_per_task_panels_show_the_top_tasks_only() -> None:
    tasks = build_all()["celery-tasks.json"]
    for panel in panels(tasks):
        for target in panel.get("targets", []):
            if "{{name}}" in target.get("legendFormat", ""):
                assert target["expr"].startswith(("topk(10, ", "bottomk(10, ")), (
                    panel["title"], target["expr"])


def test_overview_links_carry_the_variables() -> None:
    overview = build_all()["celery-overview.json"]
    urls = [link["url"] for p in panels(overview) for link in p.get("links", [])]
    urls += [v["url"] for p in panels(overview) for o in p.get("fieldConfig", {}).get(
        "overrides", []) for prop in o["properties"] if prop["id"] == "links"
        for v in prop["value"]]
    for uid in ("celery-queues", "celery-tasks", "celery-workers"):
        assert any(u.startswith(f"/d/{uid}/") for u in urls), uid
    for url in urls:
        assert "${__url_time_range}" in url and "${job:queryparam}" in url, url
        assert "${instance:queryparam}" in url, url
    assert any("var-queue=${__field.labels.queue}" in u for u in urls)


def test_overview_queue_wait_is_the_worst_queue() -> None:
    overview = build_all()["celery-overview.json"]
    panel = next(p for p in panels(overview) if p["title"] == "Queue wait p95 (worst queue)")
    expr = panel["targets"][0]["expr"]
    assert expr.startswith("max(histogram_quantile(0.95, sum by (job, queue, le) "), expr


def test_gauges_and_rates_take_one_replica() -> None:
    # Two exporters on one broker: every sum over worker gauges or counter rates reads one
    # replica's value per series first (the rules do the same).
    for where, expr in all_expressions(build_all()):
        for inner in re.findall(r"sum(?: by \([^)]*\))? \((.{0,40})", expr):
            assert inner.startswith(("max without (instance, pod)", "max by (queue)",
                                     "rate(", "max(")) or "__name__" in inner, (where, expr)


# --- CLI and upload ---

def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["dashboards", *argv])


def test_cli_writes_and_checks(tmp_path: Path) -> None:
    assert cli.run(parse(["--out", str(tmp_path), "--datasource", "Mimir", "--job-selector",
                          'job="w", env="prod"', "--cluster-label", "region"])) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(UIDS)
    text = (tmp_path / "celery-queues.json").read_text(encoding="utf-8")
    assert 'job=\\"w\\", env=\\"prod\\"' in text and 'region=~\\"$cluster\\"' in text
    assert cli.run(parse(["--out", str(tmp_path), "--check", "--datasource", "Mimir",
                          "--job-selector", 'job="w", env="prod"', "--cluster-label",
                          "region"])) == 0
    assert cli.run(parse(["--out", str(tmp_path), "--check"])) == 1
    assert cli.run(parse(["--out", str(JSON_DIR), "--check"])) == 0


class FakeGrafana:
    """Just enough of Grafana's HTTP API to check what the uploader sends."""

    def __init__(self, *, token: str = "", user: str = "", password: str = "",
                 folders: list[dict[str, Any]] | None = None) -> None:
        self.token, self.user, self.password = token, user, password
        self.folders = list(folders or [])
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        self.errors: list[str] = []

    def authorised(self, header: str | None) -> bool:
        if self.token:
            return header == f"Bearer {self.token}"
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return header == f"Basic {expected}"

    def handle(self, method: str, path: str, headers: Any, body: bytes
               ) -> tuple[int, Any]:
        data = json.loads(body) if body else None
        self.requests.append((method, path, data))
        if not self.authorised(headers.get("Authorization")):
            return 401, {"message": "Unauthorized"}
        if method == "POST" and headers.get("Content-Type") != "application/json":
            return 415, {"message": "bad content type"}
        route = path.split("?", 1)[0]
        if (method, route) == ("GET", "/api/folders"):
            return 200, [{"id": i + 1, **f} for i, f in enumerate(self.folders)]
        if (method, route) == ("POST", "/api/folders"):
            if not isinstance(data, dict) or not data.get("title"):
                return 400, {"message": "title required"}
            if any(f["title"] == data["title"] for f in self.folders):
                return 409, {"message": "a folder with the same name already exists"}
            uid = data.get("uid") or "generated"
            if len(uid) > 40 or not re.fullmatch(r"[A-Za-z0-9_-]+", uid):
                return 400, {"message": "invalid uid"}
            folder = {"uid": uid, "title": data["title"]}
            self.folders.append(folder)
            return 200, {"id": len(self.folders), **folder}
        if (method, route) == ("POST", "/api/dashboards/db"):
            if not isinstance(data, dict) or set(data) - {
                    "dashboard", "overwrite", "folderUid", "message", "folderId"}:
                return 400, {"message": "bad body"}
            dash = data.get("dashboard")
            if not isinstance(dash, dict) or not dash.get("title") or not dash.get("uid"):
                return 400, {"message": "dashboard needs title and uid"}
            if dash.get("id") is not None:
                return 404, {"message": "Dashboard not found"}  # what a foreign id gets
            if "folderUid" in data and data["folderUid"] not in {f["uid"] for f in self.folders}:
                return 400, {"message": "folder not found"}
            if dash["uid"] in self.dashboards and data.get("overwrite") is not True:
                return 412, {"message": "version-mismatch"}
            self.dashboards[dash["uid"]] = data
            slug = re.sub(r"[^a-z0-9]+", "-", dash["title"].lower()).strip("-")
            return 200, {"id": len(self.dashboards), "uid": dash["uid"], "status": "success",
                         "url": f"/d/{dash['uid']}/{slug}", "version": 1, "slug": slug}
        return 404, {"message": "Not found"}


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    fake = FakeGrafana(token="s3cret-token")

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, payload = fake.handle(self.command, self.path, self.headers,
                                          self.rfile.read(length))
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_upload_creates_folder_and_dashboards(grafana: tuple[FakeGrafana, str],
                                              capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fake, url = grafana
    monkeypatch.chdir(tmp_path)  # uploading alone must not write dashboards/json here
    assert cli.run(parse(["--upload", url + "/", "--grafana-token", "s3cret-token",
                          "--folder", "Celery Jobs"])) == 0
    assert [(m_, p) for m_, p, _ in fake.requests] == [
        ("GET", "/api/folders?limit=1000"), ("POST", "/api/folders"),
        *[("POST", "/api/dashboards/db")] * 4]
    assert fake.folders == [{"uid": "celery-jobs", "title": "Celery Jobs"}]
    assert set(fake.dashboards) == set(UIDS.values())
    for uid, body in fake.dashboards.items():
        assert body["overwrite"] is True and body["folderUid"] == "celery-jobs"
        assert body["dashboard"] == {**build_all()[f"{uid}.json"], "id": None}
    out = capsys.readouterr()
    assert f"uploaded {url}/d/celery-overview/celery-overview" in out.out
    assert "s3cret" not in out.out + out.err
    assert not list(tmp_path.iterdir())


def test_upload_reuses_folder_with_basic_auth(grafana: tuple[FakeGrafana, str]) -> None:
    fake, url = grafana
    fake.token, fake.user, fake.password = "", "admin", "pw"
    fake.folders = [{"uid": "abc123", "title": "Celery"}]
    urls = upload.upload(url, upload.Auth(user="admin", password="pw"),
                         build_all(), folder="Celery")
    assert len(urls) == 4
    assert [p for _, p, _ in fake.requests].count("/api/folders") == 0  # found, not created
    assert {b["folderUid"] for b in fake.dashboards.values()} == {"abc123"}
    # A second run overwrites in place.
    upload.upload(url, upload.Auth(user="admin", password="pw"), build_all(), folder="Celery")
    assert len(fake.dashboards) == 4


def test_upload_without_folder_goes_to_general(grafana: tuple[FakeGrafana, str]) -> None:
    fake, url = grafana
    upload.upload(url, upload.Auth(token="s3cret-token"), build_all())
    assert all(p == "/api/dashboards/db" for _, p, _ in fake.requests)
    assert all("folderUid" not in b for b in fake.dashboards.values())


def test_upload_errors_are_reported(grafana: tuple[FakeGrafana, str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = grafana
    assert cli.run(parse(["--upload", url, "--grafana-token", "wrong-token"])) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "wrong-token" not in err
    assert fake.dashboards == {}
    with pytest.raises(upload.UploadError, match="grafana-token"):
        upload.upload(url, upload.Auth(), build_all())
    with pytest.raises(upload.UploadError, match="http"):
        upload.upload("ftp://grafana", upload.Auth(token="x"), build_all())


def test_upload_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # A server that accepts and never answers must not hang the upload.
    monkeypatch.setattr(upload, "TIMEOUT", (1.0, 0.5))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(upload.UploadError, match="Timeout"):
            upload.upload(f"http://127.0.0.1:{port}", upload.Auth(token="t"), build_all())


def test_upload_verifies_tls() -> None:
    client = upload.Grafana("https://grafana.invalid", upload.Auth(token="t"))
    assert client.session.verify is True


# --- the renderer behind the README pictures ---

def panel_defaults(dashboard: str, title: str) -> dict[str, Any]:
    panel = next(p for p in panels(build_all()[dashboard]) if p["title"] == title)
    defaults: dict[str, Any] = panel["fieldConfig"]["defaults"]
    return defaults


def test_renderer_colours_stats_by_thresholds_and_mappings() -> None:
    from celery_events_exporter.dashboards.render import NAMED, stat_cell

    ratio = panel_defaults("celery-overview.json", "Success ratio")
    assert stat_cell(0.79, ratio) == ("79.00%", NAMED["red"])
    assert stat_cell(0.995, ratio) == ("99.50%", NAMED["green"])
    exporter = panel_defaults("celery-overview.json", "Exporter")
    assert stat_cell(0, exporter) == ("DOWN", NAMED["red"])
    assert stat_cell(1, exporter) == ("UP", NAMED["green"])
    lost = panel_defaults("celery-overview.json", "Workers lost")
    assert stat_cell(0, lost) == ("0", NAMED["green"])
    assert stat_cell(2, lost) == ("2", NAMED["red"])


@pytest.mark.parametrize("value, unit, text", [
    (0.012, "s", "12 ms"), (4.5, "s", "4.50 s"), (290, "s", "4.8 min"),
    (7200, "s", "2.0 hour"), (0.1234, "percentunit", "12.3%"), (12345, "short", "12.3 k"),
    (3.5, "suffix:tasks/s", "3.5 tasks/s"), (2, "short", "2"),
])
def test_renderer_units(value: float, unit: str, text: str) -> None:
    from celery_events_exporter.dashboards.render import _format

    assert _format(value, unit) == text
