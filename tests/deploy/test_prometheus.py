"""The repository's monitoring, checked by a real Prometheus and promtool.

A live `mnist-serve --workers 2` (over the fault-injecting tiny model, so that some requests
fail with 500) is scraped by Prometheus running `deploy/prometheus/prometheus.yml` with its
target pointed at the test server; the test then asks Prometheus's HTTP API whether the totals
equal what was sent, whether every metric the README lists is there with its labels, and
whether every query of the Grafana dashboard and of the alert rules finds its series.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import yaml

from service.metrics import cgroup_memory_limit
from tests.conftest import LiveServer, free_port, launch_server, stop_server
from tests.fault_model import ON_TENSORFLOW, RAISE_PIXEL

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mnist-serving.json"
OPERATOR_RULE = ROOT / "k8s" / "overlays" / "servicemonitor" / "prometheusrule.yaml"
EXAMPLES = ROOT / "examples"

if not shutil.which("prometheus") and not os.environ.get("CI"):
    pytest.skip(
        "no prometheus binary (apt-get install prometheus); CI always has it",
        allow_module_level=True,
    )


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", ALERTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    tested = promtool("test", "rules", DEPLOY / "prometheus" / "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert is exercised by at least one unit test.
    tests = (DEPLOY / "prometheus" / "alerts.test.yml").read_text()
    for alert in alert_rules():
        assert f"alertname: {alert['alert']}" in tests, alert["alert"]


def test_the_operator_rule_carries_the_same_alerts() -> None:
    shipped = yaml.safe_load(OPERATOR_RULE.read_text())
    assert shipped["kind"] == "PrometheusRule"
    assert shipped["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], t["expr"]) for panel in dashboard["panels"] for t in panel["targets"]]


def readme_metrics() -> dict[str, set[str]]:
    """The families the README lists under `GET /metrics`, with their labels."""
    readme = (ROOT / "README.md").read_text()
    bullet = readme[readme.index("- `GET /metrics`") :]
    bullet = bullet[: bullet.index("\n- ")]
    families: dict[str, set[str]] = {}
    for name, labels in re.findall(r"`([a-z_]+)(?:\{([a-z_,]+)\})?`", bullet):
        if re.search(r"_(total|seconds|size|depth|info|requests|bytes)$", name):
            families.setdefault(name, set()).update(filter(None, labels.split(",")))
    return families


# --- a live server scraped by a real Prometheus ----------------------------------------------


@pytest.fixture(scope="module")
def server(
    faulty_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("prometheus-server") / "server.log"
    live = launch_server(
        faulty_repository,
        log,
        MNIST_WORKERS="2",
        MNIST_GRPC_PORT=str(free_port()),
        **ON_TENSORFLOW,
    )
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def prometheus(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus on the repository's configuration: the same job and rules, the target
    rewritten to the test server, scrapes every second instead of every five."""
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "mnist-serving"
    job["static_configs"] = [{"targets": [server.url.removeprefix("http://")]}]
    config["rule_files"] = [str(ALERTS) for _ in config["rule_files"]]
    config_path = work / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", config_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    url = f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config_path}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
        ],
        stdout=(work / "prometheus.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: httpx.get(url + "/-/ready", timeout=2).status_code == 200, 60)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def wait_until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError("condition not met in time")


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(prometheus + "/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", (promql, answer)
    return list(answer["data"]["result"])


@pytest.fixture(scope="module")
def traffic(server: LiveServer, prometheus: str) -> Counter[tuple[str, str]]:
    """A little of everything, counted by (route, status), then scraped."""
    sent: Counter[tuple[str, str]] = Counter()
    image = np.zeros((28, 28), np.float32)
    failing = image.copy()
    failing[0, 0] = RAISE_PIXEL
    with server.client() as client:

        def post(route: str, path: str, **kwargs: Any) -> None:
            sent[(route, str(client.post(path, **kwargs).status_code))] += 1

        for _ in range(30):
            post("/v1/predict", "/v1/predict", json={"instances": [image.tolist()]})
        for _ in range(3):
            post("/v1/predict", "/v1/predict", json={"instances": [failing.tolist()]})
            post("/v1/predict", "/v1/predict", json={"instances": "not images"})
        for name in ("digit.png", "one.jpg"):
            body = (EXAMPLES / name).read_bytes()
            post("/v1/predict/image", "/v1/predict/image", files={"file": (name, body)})
        v2 = {
            "inputs": [{"name": "image", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}]
        }
        for _ in range(3):
            post("/v2/models/{name}/infer", "/v2/models/mnist/infer", json=v2)
    grpc_port = server.logs().split("gRPC on 127.0.0.1:")[1].split('"')[0]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
        live(b"")  # an empty ServerLiveRequest
    assert sent[("/v1/predict", "500")] == 3  # the injected failures
    assert sent[("/v1/predict", "200")] == 30

    def scraped() -> bool:
        rows = query(
            prometheus,
            'sum by (route, status) (http_requests_total{route!~"/metrics|/healthz|/readyz"})',
        )
        seen = {(r["metric"]["route"], r["metric"]["status"]): float(r["value"][1]) for r in rows}
        return seen == {key: float(count) for key, count in sent.items()}

    wait_until(scraped, 30)  # totals over both workers equal what was sent
    time.sleep(3)  # a few more scrapes, so that rates have their two samples
    return sent


def test_scraped_totals_equal_the_requests_sent_across_workers(
    prometheus: str, traffic: Counter[tuple[str, str]]
) -> None:
    pids = query(prometheus, "count by (pid) (model_info)")
    assert len(pids) == 2  # both workers report
    predictions = query(prometheus, "sum(predictions_total)")
    # Each answered image is one prediction: 30 + 2 uploads + 3 V2 (the 500s and 422s are not).
    assert float(predictions[0]["value"][1]) == 35


def test_every_metric_the_readme_lists_is_there_with_its_labels(
    prometheus: str, traffic: Counter[tuple[str, str]]
) -> None:
    families = readme_metrics()
    assert len(families) >= 15  # the README's list was found
    for name, labels in families.items():
        if name == "process_memory_limit_bytes" and cgroup_memory_limit() is None:
            continue  # absent where the container has no limit, as documented
        series = query(prometheus, f'{{__name__=~"{name}|{name}_count"}}')
        assert series, f"{name} is listed in the README but not exported"
        for label in labels:
            assert all(label in s["metric"] for s in series), (name, label)


def test_every_dashboard_query_returns_data(
    prometheus: str, traffic: Counter[tuple[str, str]]
) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 12
    empty = [(title, expr) for title, expr in queries if not query(prometheus, expr)]
    assert not empty, f"dashboard queries that find nothing: {empty}"


def test_every_alert_selector_finds_its_series_and_rules_evaluate(
    prometheus: str, traffic: Counter[tuple[str, str]]
) -> None:
    missing = []
    for rule in alert_rules():
        for selector in selectors(rule["expr"]):
            if selector.startswith("process_memory_limit_bytes") and cgroup_memory_limit() is None:
                continue
            if not query(prometheus, f"count({selector})"):
                missing.append((rule["alert"], selector))
    assert not missing, f"alert selectors that match no series: {missing}"
    rules = httpx.get(prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    evaluated = [r for group in rules for r in group["rules"]]
    assert len(evaluated) == len(alert_rules())
    assert all(r["health"] == "ok" for r in evaluated), [
        (r["name"], r.get("lastError")) for r in evaluated
    ]
    firing = {r["name"] for r in evaluated if r["state"] != "inactive"}
    # A healthy server with a model: nothing is down, unready or short of memory.
    assert not firing & {"MnistServingDown", "MnistNoModelReady", "MnistMemoryNearLimit"}


_GROUPING = re.compile(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = frozenset({"or", "and", "unless", "bool", "offset", "inf", "nan"})


def selectors(expr: str) -> list[str]:
    """The series selectors of a PromQL expression (`name{matchers}`), functions, aggregation
    groupings, ranges and numbers left out."""
    text = re.sub(r"\[[^\]]*\]", "", _GROUPING.sub(" ", expr))
    found = []
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", text):
        name = match.group(1)
        if name in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        found.append(name + (match.group(2) or ""))
    return found


def test_selector_extraction() -> None:
    expr = (
        'sum by (job, instance) (rate(http_requests_total{status=~"5..", status!="503"}[5m])) '
        "/ max by (job) (model_info) or on (job) (up * 0) > 0.05"
    )
    assert selectors(expr) == [
        'http_requests_total{status=~"5..", status!="503"}',
        "model_info",
        "up",
    ]
