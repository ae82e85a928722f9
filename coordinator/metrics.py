"""The coordinator's Prometheus metrics and its certificate-free HTTP listener (``/metrics``, ``/healthz``, ``/readyz``).

One :class:`Metrics` per coordinator holds its own ``CollectorRegistry``, so several coordinators in one process
(tests, the demo) never mix their figures. The round driver owns it; the servers reach it through the driver.

Notes:
    The listener carries no client certificate check, so it exposes only counts, durations, byte totals and
    each silo's recomputed epsilon, which the audit ledger already publishes to every consortium member
    (DESIGN 7 and 8). Never a key, a mask, a share, an update value or a model parameter.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

log = logging.getLogger(__name__)

__all__ = ["Metrics", "MetricsServer", "serve_metrics"]

STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Stage latency buckets (seconds): from a loopback stage to the longest default deadlines."""


class Metrics:
    """The metrics of one coordinator (names ``secagg_...``), in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds = Counter(
            "secagg_rounds", "Rounds that ended, by outcome.", ["outcome"], registry=r
        )
        self.stage_seconds = Histogram(
            "secagg_stage_duration_seconds",
            "Time from a stage's opening to its closing.",
            ["stage", "mode"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.dropouts = Counter(
            "secagg_dropouts",
            "Roster members that did not contribute to a completed round.",
            registry=r,
        )
        self.refusals = Counter(
            "secagg_refusals",
            "Calls refused with a gRPC status, by status code.",
            ["code"],
            registry=r,
        )
        self.received_bytes = Counter(
            "secagg_received_bytes", "Bytes of upload chunks received.", registry=r
        )
        self.sent_bytes = Counter("secagg_sent_bytes", "Bytes of global model sent.", registry=r)
        self.joined_silos = Gauge(
            "secagg_joined_silos", "Silos that joined since this coordinator started.", registry=r
        )
        self.leader = Gauge(
            "secagg_leader",
            "1 while this replica holds the store's lock and serves, else 0.",
            registry=r,
        )
        self.ledger_entries = Gauge(
            "secagg_ledger_entries", "Entries in the audit ledger.", registry=r
        )
        self.epsilon = Gauge(
            "secagg_epsilon_spent",
            "Each silo's epsilon spent so far, as the coordinator recomputed it from its attestations.",
            ["silo"],
            registry=r,
        )
        self._serving = threading.Event()

    @property
    def ready(self) -> bool:
        """Whether this replica leads and serves (what ``/readyz`` answers)."""
        return self._serving.is_set()

    def set_ready(self, ready: bool) -> None:
        """Mark this replica as leading and serving (or not): the leader gauge and ``/readyz`` follow."""
        if ready:
            self._serving.set()
        else:
            self._serving.clear()
        self.leader.set(1 if ready else 0)

    def refused(self, code: str) -> None:
        """Count one call refused with gRPC status ``code`` (its name, e.g. ``PERMISSION_DENIED``)."""
        self.refusals.labels(code=code).inc()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood stderr; the operator's log has the round events."""


class MetricsServer:
    """A running metrics listener (a daemon thread); :attr:`port` is the bound port."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_address[1]

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def _app(metrics: Metrics) -> Callable[..., Iterable[bytes]]:
    scrape = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        text = "text/plain; charset=utf-8"
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", text)])
            return [b"ok\n"]
        if path == "/readyz":
            if metrics.ready:
                start_response("200 OK", [("Content-Type", text)])
                return [b"ready\n"]
            start_response("503 Service Unavailable", [("Content-Type", text)])
            return [b"not ready\n"]
        if path == "/metrics":
            result: Iterable[bytes] = scrape(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", text)])
        return [b"not found\n"]

    return app


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def serve_metrics(metrics: Metrics, listen: str) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` over plain HTTP on ``listen`` (``host:port``, port 0 allowed).

    Notes:
        The endpoint has no TLS and no authentication, as Prometheus and orchestrators' probes expect, and it
        names the silos (epsilon spent per silo, connected silos): off loopback it is said once as a warning,
        so an operator who exposes it does so knowingly (keep it on a private network, or behind a proxy).

    Raises:
        OSError: the address cannot be bound (one line saying what to change).
    """
    host, _, port = listen.rpartition(":")
    if not _loopback(host.strip("[]")):
        log.warning(
            "the metrics listener %s is plain HTTP without authentication and names the silos; "
            "keep it on a private network or bind it to 127.0.0.1 ([metrics] listen)",
            listen,
        )
    try:
        server = make_server(
            host.strip("[]"), int(port), _app(metrics), _Server, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise OSError(
            f"cannot bind the metrics listener {listen}: {exc.strerror or exc}; "
            "change [metrics] listen in serve.toml"
        ) from exc
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
