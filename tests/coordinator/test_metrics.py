"""coordinator.metrics: a registry per coordinator, and the plain-HTTP listener's routes and bind errors."""

from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.metrics import Metrics, serve_metrics


def get(port: int, path: str) -> tuple[int, str]:
    """A plain HTTP GET (no client certificate, no TLS), as an orchestrator's probe or Prometheus sends it."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_two_coordinators_keep_their_own_figures_and_readiness() -> None:
    one, two = Metrics(), Metrics()
    one.refused("NOT_FOUND")
    one.set_ready(True)
    first, second = serve_metrics(one, "127.0.0.1:0"), serve_metrics(two, "127.0.0.1:0")
    try:
        assert get(first.port, "/readyz") == (200, "ready\n")
        assert get(second.port, "/readyz") == (503, "not ready\n")
        assert get(second.port, "/healthz") == (200, "ok\n")
        status, text = get(first.port, "/metrics")
        assert status == 200
        samples = {
            (s.name, tuple(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("secagg_refusals_total", (("code", "NOT_FOUND"),))] == 1
        assert samples[("secagg_leader", ())] == 1
        other = get(second.port, "/metrics")[1]
        assert 'code="NOT_FOUND"' not in other
        one.set_ready(False)
        assert get(first.port, "/readyz")[0] == 503
    finally:
        first.stop()
        second.stop()


def test_a_taken_port_is_one_line_saying_what_to_change() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=r"change \[metrics\] listen in serve.toml") as info:
            serve_metrics(Metrics(), f"127.0.0.1:{port}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("host", "warned"), [("127.0.0.1", False), ("localhost", False), ("0.0.0.0", True)]
)
def test_a_listener_off_loopback_is_warned_as_plain_http_naming_silos(
    host: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="coordinator.metrics"):
        server = serve_metrics(Metrics(), f"{host}:0")
    server.stop()
    warnings = [r.getMessage() for r in caplog.records]
    assert bool(warnings) is warned
    if warned:
        (line,) = warnings
        assert "plain HTTP without authentication and names the silos" in line
        assert "[metrics] listen" in line
