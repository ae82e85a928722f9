"""Observability for the operator (issue 17): the real metrics endpoint scraped over HTTP after a round on the
``secagg serve`` path (mTLS on loopback), health probes without a client certificate (a standby answers 503 on
/readyz), and the demo's JSON log files parsed line by line."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.common import RoundStatus
from coordinator.config import MetricsConfig, ServeConfig, StorageConfig, write_demo_configs
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.server.app import Coordinator, start_coordinator
from dp.accounting import RdpAccountant
from secagg import Stage
from tests.coordinator.test_metrics import get
from tests.e2e.harness import (
    FEDERATION,
    Consortium,
    deadlines_with,
    in_threads,
    secure_channel,
    wait_until,
)
from tests.e2e.test_privacy_attestation import DELTA, LENGTH, STEP, sdk_silo
from tests.e2e.test_restart import REPO, sdk_round
from tests.e2e.test_single_coordinator import serve_command

pytestmark = pytest.mark.e2e

MASKING_STAGES = [
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client's own parser: (name, labels) -> value."""
    status, text = get(port, "/metrics")
    assert status == 200
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def serve_config(consortium: Consortium, folder: Path, *, rounds: int) -> ServeConfig:
    path, _ = write_demo_configs(
        consortium.paths,
        folder,
        rounds=rounds,
        model_size=LENGTH,
        min_cohort=3,
        listen="127.0.0.1:0",
        coordinator="127.0.0.1:1",
        deadlines=deadlines_with(),
        metrics="127.0.0.1:0",
    )
    return ServeConfig.load(path)


def test_metrics_scraped_after_real_rounds(
    trio: Consortium, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.sdk.loop")
    rounds = 2
    coordinator = start_coordinator(serve_config(trio, tmp_path / "serve", rounds=rounds))
    address = f"127.0.0.1:{coordinator.port}"
    try:
        port = coordinator.metrics_port
        assert port is not None and port > 0
        before = scrape(port)
        assert before[("secagg_leader", ())] == 1.0
        assert before[("secagg_joined_silos", ())] == 0.0
        assert before.get(("secagg_rounds_total", (("outcome", "completed"),)), 0.0) == 0.0
        reports = in_threads(
            *[lambda s=s: sdk_silo(trio, s, address, rounds=rounds) for s in trio.silos]
        )
        for silo_reports in reports:
            assert [r.status for r in silo_reports] == [RoundStatus.COMPLETED] * rounds
        wait_until(lambda: coordinator.service.finished, what="both rounds ended")
        # a refused call: a round beyond the planned ones is NOT_FOUND
        channel = secure_channel(address, trio.silo_tls("a"))
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.FederationStub(channel).GetResult(
                pb.StageRequest(federation=FEDERATION, silo="a", round=rounds + 5), timeout=10
            )
        channel.close()
        assert info.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        after = scrape(port)
    finally:
        coordinator.stop()

    assert after[("secagg_rounds_total", (("outcome", "completed"),))] == rounds
    assert after[("secagg_joined_silos", ())] == 3
    assert after[("secagg_dropouts_total", ())] == 0
    assert after[("secagg_refusals_total", (("code", "NOT_FOUND"),))] >= 1
    for stage in MASKING_STAGES:
        labels = (("mode", "masking"), ("stage", stage.value))
        assert after[("secagg_stage_duration_seconds_count", labels)] == rounds
        assert after[("secagg_stage_duration_seconds_sum", labels)] >= 0
    # every silo uploads LENGTH 32-bit words per round, and downloads the float32 model at least per round
    assert after[("secagg_received_bytes_total", ())] >= 3 * rounds * LENGTH * 4
    assert after[("secagg_sent_bytes_total", ())] >= 3 * rounds * LENGTH * 4
    assert after[("secagg_ledger_entries", ())] == coordinator.service.audit.ledger.size
    # the coordinator's own recomputation of each silo's spend after two rounds of STEP
    spent = RdpAccountant(history=(STEP,) * rounds).epsilon(DELTA)
    for silo in trio.silos:
        assert after[("secagg_epsilon_spent", (("silo", silo),))] == pytest.approx(spent)
    # this coordinator's own registry: its metrics only (no process or other coordinator's figures)
    assert {name for name, _ in after if not name.startswith("secagg_")} == set()
    # hand-written silos (the SDK's Silo.run, no CLI) log one event per round each
    done = [r for r in caplog.records if r.name == "coordinator.sdk.loop" and hasattr(r, "outcome")]
    assert sorted(r.getMessage() for r in done) == sorted(
        f"round {n} completed" for n in range(rounds) for _ in trio.silos
    )
    assert {(r.survivors, r.dropped) for r in done} == {(3, 0)}  # type: ignore[attr-defined]


def test_health_without_a_client_certificate_and_standby_not_ready(
    trio: Consortium, tmp_path: Path
) -> None:
    config = serve_config(trio, tmp_path / "serve", rounds=1)
    leader = start_coordinator(config)
    standby_started: list[Coordinator] = []
    failure: list[BaseException] = []
    try:
        port = leader.metrics_port
        assert port is not None
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/readyz") == (200, "ready\n")
        assert get(port, "/nothing")[0] == 404
        # a standby replica on the same store: its listener answers while it waits for the lock
        standby_config = config.model_copy(
            update={
                "storage": StorageConfig(url=config.storage.url, standby=True),
                "metrics": MetricsConfig(listen=f"127.0.0.1:{_free_port()}"),
            }
        )
        assert standby_config.metrics is not None
        standby_port = int(standby_config.metrics.listen.rpartition(":")[2])

        def stand_by() -> None:
            try:
                standby_started.append(start_coordinator(standby_config))
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=stand_by, daemon=True)
        thread.start()
        wait_until(lambda: _answers(standby_port), what="the standby's health listener")
        assert get(standby_port, "/healthz") == (200, "ok\n")
        assert get(standby_port, "/readyz") == (503, "not ready\n")
        assert not standby_started
    finally:
        leader.stop()
    assert not _answers(port)  # a stopped coordinator closed its listener
    thread.join(30)
    assert not failure, failure
    assert standby_started, "the standby took over once the leader stopped"
    try:
        assert get(standby_port, "/readyz") == (200, "ready\n")
        assert scrape(standby_port)[("secagg_leader", ())] == 1.0
    finally:
        standby_started[0].stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False


@pytest.mark.slow
def test_the_demo_writes_json_coordinator_and_silo_logs(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "demo", "--rounds", "1", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    coordinator_events = _json_lines(out / "coordinator.log")
    stage_events = [e for e in coordinator_events if "stage" in e and e.get("round") == 0]
    assert [e["stage"] for e in stage_events] == [s.value for s in MASKING_STAGES]
    for event in stage_events:
        assert event["outcome"] == "closed"
        assert event["answered"] == 3 or event["stage"] == Stage.CONSISTENCY_CHECK.value
        assert event["duration_s"] >= 0 and event["dropped"] >= 0
    [round_event] = [e for e in coordinator_events if e.get("outcome") == "completed"]
    assert round_event["round"] == 0 and round_event["survivors"] == 3
    silo_logs = sorted(out.glob("silo-*.log"))
    assert len(silo_logs) == 3
    for path in silo_logs:
        events = _json_lines(path)
        [done] = [e for e in events if e.get("event") == "round 0 completed"]
        assert done["outcome"] == "completed" and done["level"] == "info"
        assert done["epsilon_spent"] > 0 and done["duration_s"] > 0


def _json_lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.strip(), f"{path.name} is empty"
    events = [json.loads(line) for line in text.splitlines()]
    for event in events:
        assert {"event", "level", "timestamp"} <= set(event), event
    return events


def test_secagg_serve_logs_json_lines_one_per_stage(trio: Consortium, tmp_path: Path) -> None:
    command = [
        *serve_command(trio, tmp_path / "serve", str(tmp_path / "c.sqlite")),
        "--log-format",
        "json",
    ]
    proc = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "listening on port" in line:
                break
        port = int(re.search(r"listening on port (\d+)", lines[-1]).group(1))  # type: ignore[union-attr]
        pump = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
        pump.start()
        reports = sdk_round(trio, f"127.0.0.1:{port}")
        assert [r.status for r in reports] == [RoundStatus.COMPLETED] * 3
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        pump.join(10)
    finally:
        proc.kill()
        proc.wait()
    events = [json.loads(line) for line in lines if line.strip()]
    for event in events:
        assert {"event", "level", "logger", "timestamp"} <= set(event), event
    stages = [e["stage"] for e in events if "stage" in e and e.get("round") == 0]
    assert stages == [s.value for s in MASKING_STAGES]
    assert any(e.get("outcome") == "completed" and e.get("round") == 0 for e in events)
