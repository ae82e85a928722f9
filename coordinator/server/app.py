"""Server construction for every mode: gRPC options, binding with mTLS, and a running coordinator from ``serve.toml``.

The mode's own servicer comes from the mode registry (:mod:`coordinator.modes`); everything around it (the
``Audit`` service, health checking, message limits, concurrency limits, mTLS) is built here once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # untyped re-export

from audits.database import redact
from coordinator import modes
from coordinator._malloc import tune_allocator
from coordinator.common import FloatVector, TlsFiles
from coordinator.config import LimitsConfig, ModelConfig, ServeConfig, TLSPaths
from coordinator.config.tls import check_tls
from coordinator.errors import ConfigError, PKIError
from coordinator.metrics import Metrics, MetricsServer, serve_metrics
from coordinator.modes import call_entry_point
from coordinator.pki import Revocations, load_certificate, tls_key_pem
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.rounds.audit import open_audit_trail
from coordinator.rounds.driver import FederationSettings, RoundDriver
from coordinator.server.aio import AioBridge, AioServer, Collector, on_loop
from coordinator.server.audit import AuditServicer
from coordinator.server.base import caller_identity
from coordinator.store import SQLStore, StoreLock

__all__ = [
    "Coordinator",
    "bind_server",
    "initial_model",
    "server_options",
    "start_coordinator",
    "tls_files",
]

log = logging.getLogger(__name__)

AddServicer = Callable[[Any, dict[str, Any]], str]
"""Registers a mode's servicer (given the shared servicer options) as a generated ``add_*Servicer_to_server``
does on a server; returns its service name."""


STREAM_LOOKAHEAD_BYTES = 16 * 1024
"""HTTP/2 receive window of a stream before the application asks for its next message (gRPC's default: 64 KiB)."""


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC core channel arguments of the coordinator's server (see ``grpc_types.h`` in gRPC core).

    - ``grpc.max_receive_message_length`` / ``grpc.max_send_message_length``: the configured message limit.
    - ``grpc.so_reuseport`` = 0: the port is bound exclusively. gRPC sets ``SO_REUSEPORT`` by default, so a
      second coordinator on the same address would bind too and the kernel would share the connections
      between the two (issue 17); without it the second one fails to bind.
    - ``grpc.http2.bdp_probe`` = 0: fixed flow-control windows. With bandwidth-delay-product probing every
      concurrent upload stream grows its window to megabytes of chunks buffered in the coordinator, so its
      memory would grow with the number of silos.
    - ``grpc.http2.lookahead_bytes`` = :data:`STREAM_LOOKAHEAD_BYTES`: how much of an upload stream gRPC
      buffers ahead of the handler. The window opens by one message when the handler asks for it, so a
      smaller lookahead only lowers what waits per stream while the handler is busy (a few vectors at 50
      silos) and leaves throughput unchanged.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", STREAM_LOOKAHEAD_BYTES),
    ]


def bind_server(
    rounds: RoundDriver,
    address: str,
    add_mode_servicer: AddServicer,
    *,
    tls: TlsFiles | None,
    revoked: Iterable[str] = (),
    max_message_bytes: int = 4 << 20,
    insecure_debug_no_tls: bool = False,
    limits: LimitsConfig | None = None,
) -> tuple[AioServer, int]:
    """Build (without starting) a coordinator's gRPC server for any mode; returns it and the bound port.

    mTLS is mandatory: the server requires a client certificate chained to the consortium CA. The only way
    around it is ``insecure_debug_no_tls=True``, for local debugging, which identifies callers by a header
    anyone can set. Besides the mode's servicer the server answers the read-only ``Audit`` service (silos
    witness checkpoints through it) and standard health checking. It runs on ``grpc.aio``
    (:mod:`coordinator.server.aio`): waiting calls hold no thread, work runs on ``limits.workers`` threads, and
    each silo's calls and streams in flight are bounded by ``limits`` (defaults of ``[limits]``).
    """
    if tls is None and not insecure_debug_no_tls:
        raise ValueError(
            "TLS material is required (insecure_debug_no_tls is for local debugging only)"
        )
    limits = limits if limits is not None else LimitsConfig()
    shared: dict[str, Any] = {
        # a Revocations (CA-signed CRL, re-read on change) passes through as it is
        "revoked": revoked if isinstance(revoked, Revocations) else frozenset(revoked),
        "insecure": tls is None,
        "max_message_bytes": max_message_bytes,
    }
    federation = rounds.settings.federation
    bridge = AioBridge(
        limits=limits,
        identify=lambda context: caller_identity(
            context, federation=federation, revoked=shared["revoked"], insecure=tls is None
        ),
        metrics=rounds.metrics,
        listen=rounds.on_change,
    )
    collector = Collector()
    pb_grpc.add_AuditServicer_to_server(AuditServicer(rounds, **shared), cast(Any, collector))
    # after the Audit service, so that a mode's registration may replace it (the tests' forked ledger)
    name = add_mode_servicer(collector, shared)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, collector)
    handlers = bridge.collected(collector)

    async def build() -> tuple[grpc.aio.Server, int]:
        for service in ("", name, "coordinator.proto.v1.Audit"):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        server = grpc.aio.server(handlers=handlers, options=server_options(max_message_bytes))
        try:
            if tls is None:
                port = server.add_insecure_port(address)
            else:
                credentials = grpc.ssl_server_credentials(
                    [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
                )
                port = server.add_secure_port(address, credentials)
        except RuntimeError:  # gRPC's "Failed to bind to address" (port in use, address not local)
            port = 0
        return server, port

    if tls is None:
        log.warning(
            "INSECURE: serving without TLS; silo identities are unauthenticated (debug only)"
        )
    server, port = on_loop(build())
    if port == 0:
        bridge.close()
        raise OSError(
            f"cannot bind {address}: the port is in use (another coordinator?) or the address is not local; "
            "stop the other process or change `listen` in serve.toml"
        )
    return AioServer(server, bridge), port


def revocations(config: ServeConfig) -> Revocations:
    """The certificates ``secagg serve`` refuses: ``revoked_certificates`` and the ``revocation_list`` CRL.

    Raises:
        ConfigError: the CRL does not load or is not signed by the ``[tls]`` CA.
    """
    if config.revocation_list is None or config.tls is None:
        return Revocations(config.revoked_certificates)
    try:
        return Revocations(
            config.revoked_certificates,
            crl=config.revocation_list,
            ca_cert=load_certificate(config.tls.ca),
        )
    except PKIError as exc:
        raise ConfigError(f"revocation_list: {exc}") from exc


def tls_files(paths: TLSPaths | None) -> TlsFiles | None:
    """The PEM bytes of a configuration's ``[tls]`` files (``None`` without TLS)."""
    if paths is None:
        return None
    key = tls_key_pem(paths.key)
    check_tls(
        paths, role="coordinator", key_pem=key
    )  # said in words, not as "Failed to bind to address"
    return TlsFiles(paths.ca.read_bytes(), paths.cert.read_bytes(), key)


@dataclass
class Coordinator:
    """A running coordinator (any mode): the round driver, the gRPC server, its port and its store."""

    service: RoundDriver
    server: AioServer
    port: int
    store: SQLStore
    lock: StoreLock
    metrics_server: MetricsServer | None = None

    @property
    def metrics(self) -> Metrics:
        """This coordinator's metrics (its own registry)."""
        return self.service.metrics

    @property
    def metrics_port(self) -> int | None:
        """The bound port of the ``[metrics]`` listener (``None`` without one)."""
        return None if self.metrics_server is None else self.metrics_server.port

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving, close the store and the ledger, release the store's lock, close the metrics listener."""
        self.service.metrics.set_ready(False)
        self.service.stop()
        self.server.stop(grace).wait()
        self.store.close()
        self.service.audit.close()
        self.lock.release()
        if self.metrics_server is not None:
            self.metrics_server.stop()


def initial_model(model: ModelConfig) -> FloatVector:
    """Round 0's global model as ``[model]`` says: a ``.npy`` file, a factory's output, or zeros.

    A factory returning a torch module is flattened with :func:`dp.training.get_flat_params` (the order a silo's
    trainer reads and writes its parameters in); torch is imported only then.

    Raises:
        ConfigError: the factory cannot be imported or called, or gives no usable model (one line).
    """
    if model.initial_model is not None:
        vector = np.load(model.initial_model, allow_pickle=False).astype(np.float32)
    elif model.factory is not None:
        made = call_entry_point(model.factory, "[model] factory")
        if hasattr(made, "parameters") and callable(made.parameters):
            from dp.training import get_flat_params

            vector = get_flat_params(made)
        else:
            vector = np.asarray(made)
            if vector.ndim != 1 or not np.issubdtype(vector.dtype, np.floating):
                raise ConfigError(
                    f"[model] factory {model.factory} must return a torch module or a 1-D float array, "
                    f"got {type(made).__name__}"
                )
            vector = vector.astype(np.float32)
        if model.size is not None and vector.shape[0] != model.size:
            raise ConfigError(
                f"[model] size {model.size} does not match the {vector.shape[0]} parameters of "
                f"{model.factory}"
            )
    else:
        assert model.size is not None, "validation requires size with init = zeros"
        vector = np.zeros(model.size, dtype=np.float32)
    if vector.size == 0 or not np.all(np.isfinite(vector)):
        raise ConfigError("[model]: the initial model must have parameters, all finite")
    result: FloatVector = np.ascontiguousarray(vector, dtype=np.float32)
    return result


def _exit_lost_lead() -> None:
    log.critical(
        "lost the lock on the store (database connection gone): stopping now, so that only the new "
        "leader writes; restart this coordinator to stand by again"
    )
    os._exit(3)


def start_coordinator(
    config: ServeConfig, *, on_lost_lead: Callable[[], None] = _exit_lost_lead
) -> Coordinator:
    """Build and start the coordinator described by ``config`` in its mode (rounds begin at once).

    With ``[storage] standby = true`` and another coordinator serving the store, this first waits (nothing
    read, nothing bound) until that one stops or dies, then leads. On PostgreSQL a watchdog calls
    ``on_lost_lead`` (by default: exit at once with code 3) if the lock's session is lost; the fencing epoch
    already refuses every write from then on (:class:`coordinator.store.StoreLock`).

    Raises:
        StoreError: another coordinator serves the same store (nothing was read or written).
        ConfigError: the mode's optional dependencies are missing.
        ValueError: the mode refuses the configuration (Paillier mode without TLS).
    """
    build = modes.load(config.mode, "server")
    tune_allocator()  # before the gRPC server's threads exist (see coordinator._malloc)
    initial = initial_model(config.model)
    r = config.rounds
    settings = FederationSettings(
        federation=config.federation,
        rounds=r.count,
        vector_length=int(initial.shape[0]),
        clip=r.clip,
        bits=r.bits,
        threshold=r.threshold,
        collusion=r.collusion,
        min_cohort=r.min_cohort,
        deadlines=config.deadlines,
        privacy=config.privacy,
        silo_dp=config.silo_dp,
        masking=config.masking,
    )
    metrics = Metrics()
    # The listener starts first, so a standby answers /healthz (and /readyz 503) while it waits for the lock.
    listener: MetricsServer | None = None
    if config.metrics is not None:
        listener = serve_metrics(metrics, config.metrics.listen)
        log.info("metrics and health probes (HTTP) on port %d", listener.port)
    # before the store is opened: a second coordinator must not even abort the first one's open round
    target = config.storage.target
    try:
        lock = StoreLock(
            target,
            wait=config.storage.standby,
            on_wait=lambda: log.warning(
                "standing by: another coordinator serves %s; taking over when it stops",
                redact(target),
            ),
        )
    except BaseException:
        if listener is not None:
            listener.stop()
        raise
    if lock.epoch is not None:
        log.info("leading %s (epoch %d)", redact(target), lock.epoch)
    try:
        store = SQLStore(target, fence=lock.fence)
        driver: RoundDriver
        driver, server, port = build(
            config,
            settings=settings,
            roster=config.load_roster(),
            store=store,
            initial_model=initial,
            audit=open_audit_trail(config, fence=lock.fence),
            metrics=metrics,
        )
        server.start()
        driver.start()
    except BaseException:
        lock.release()
        if listener is not None:
            listener.stop()
        raise
    metrics.set_ready(True)

    def lost_lead() -> None:
        metrics.set_ready(False)
        on_lost_lead()

    lock.watch(lost_lead)
    return Coordinator(driver, server, port, store, lock, listener)
