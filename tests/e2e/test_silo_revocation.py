"""Silos check the revocation list themselves, over real mTLS gRPC with the enrolled parties' own material.

The CA revokes in turn St Dora (enrolled, never on the roster: CRL 1), then St Clare (CRL 2), then the coordinator
(CRL 3). The coordinator enforces CRL 1 and serves it. A silo that holds nothing takes CRL 1 and runs (positive
control: peers' certificates verified, the coordinator's certificate read and not revoked). A silo whose operator
placed CRL 2 in its state directory refuses the coordinator's older CRL 1 (a rollback), keeps CRL 2, and does not
mask with St Clare although the coordinator still admits her. A silo holding CRL 3 refuses the coordinator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tomli_w

from coordinator.common import RoundStatus
from coordinator.config import ServeConfig, SiloConfig
from coordinator.errors import Unauthorized
from coordinator.pki import PASSPHRASE_ENV
from coordinator.sdk.masking import RetryPolicy, RoundContext, Silo
from coordinator.server.app import start_coordinator
from tests.e2e.harness import exact, in_threads, integer_update
from tests.e2e.test_enrolment import FEDERATION, HOSPITALS, LENGTH, Enrolment, Party, enrol, secagg
from tests.e2e.test_roster_governance import enrol_newcomer

pytestmark = pytest.mark.e2e

RETRY = RetryPolicy(attempts=4, initial=0.1, maximum=0.5)


@pytest.fixture(scope="module")
def revoked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("silo-revocation")
    (root / "enrolment").mkdir()
    enrolment = enrol(root / "enrolment")
    enrol_newcomer(
        enrolment, root / "enrolment", signers=0
    )  # enrolled with the CA, not on the roster
    crls = {}
    for number, member in enumerate(("st-dora", "st-clare", "coordinator"), start=1):
        out = enrolment.mailbox / f"crl-{number}.pem"
        secagg(
            enrolment.ca,
            "pki",
            "revoke",
            str(enrolment.ca.directory),
            "--id",
            member,
            "--out",
            str(out),
        )
        crls[number] = out
    return {"enrolment": enrolment, "crls": crls}


def serve_config(enrolment: Enrolment, root: Path, crl: Path) -> Path:
    d = enrolment.coordinator.directory
    doc: dict[str, Any] = {
        "federation": FEDERATION,
        "listen": "127.0.0.1:0",
        "storage": str(root / "coordinator.sqlite"),
        "roster": str(d / "roster.json"),
        "consortium_public_key": (d / "consortium.pub").read_text(encoding="ascii").strip(),
        "audit_key": str(d / "audit.key"),
        "tls": {"ca": str(d / "ca.pem"), "cert": str(d / "cert.pem"), "key": str(d / "key.pem")},
        "model": {"init": "zeros", "size": LENGTH},
        "rounds": {"count": 1, "clip": 32767 / 1024, "bits": 16, "min_cohort": 3},
        "revocation_list": str(crl),
        "deadlines": {"masking": {"advertise": 5.0, "share_keys": 5.0}},
    }
    path = root / "serve.toml"
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return path


def silo_config(silo: Party, index: int, address: str, root: Path) -> Path:
    d = silo.directory
    doc: dict[str, Any] = {
        "silo": silo.name,
        "coordinator": address,
        "federation": FEDERATION,
        "roster": str(d / "roster.json"),
        "consortium_public_key": (d / "consortium.pub").read_text(encoding="ascii").strip(),
        "signing_key": str(d / "signing.key"),
        "state_dir": str(root / "state" / silo.name),
        "tls": {"ca": str(d / "ca.pem"), "cert": str(d / "cert.pem"), "key": str(d / "key.pem")},
        "policy": {"min_cohort": 3, "max_collusion_assumed": 0},
        "task": {"shard": index, "num_shards": 3},
    }
    path = root / f"silo-{silo.name}.toml"
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return path


def run_round(
    revoked: dict[str, Any], root: Path, held: dict[str, Path]
) -> list[tuple[list[tuple[RoundStatus, str]], str]]:
    """One round; ``held`` maps a silo to the CRL its operator placed in its state directory beforehand."""
    enrolment: Enrolment = revoked["enrolment"]
    root.mkdir()
    for silo, crl in held.items():
        (root / "state" / silo).mkdir(parents=True)
        (root / "state" / silo / "revocations.pem").write_bytes(crl.read_bytes())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PASSPHRASE_ENV, str(enrolment.coordinator.passphrase_file))
        config = ServeConfig.load(serve_config(enrolment, root, revoked["crls"][1]))
        coordinator = start_coordinator(config)
        try:
            address = f"127.0.0.1:{coordinator.port}"
            clients = []
            for index, silo in enumerate(enrolment.silos):
                mp.setenv(PASSPHRASE_ENV, str(silo.passphrase_file))
                silo_cfg = SiloConfig.load(silo_config(silo, index, address, root))
                clients.append(Silo.from_config(silo_cfg, retry=RETRY))

            def run(index: int) -> tuple[list[tuple[RoundStatus, str]], str]:
                def train(ctx: RoundContext) -> npt.NDArray[np.float64]:
                    return exact(integer_update(index, LENGTH))

                reports: list[tuple[RoundStatus, str]] = []
                with clients[index] as client:
                    try:
                        for report in client.run(train):
                            reports.append((report.status, report.reason))
                    except Unauthorized as exc:
                        return reports, str(exc)
                return reports, ""

            return in_threads(*[lambda i=i: run(i) for i in range(3)], timeout=120)
        finally:
            coordinator.stop()


def test_a_silo_takes_the_coordinators_list_and_runs_when_nobody_in_the_round_is_revoked(
    revoked: dict[str, Any], tmp_path: Path
) -> None:
    results = run_round(revoked, tmp_path / "run", held={})
    assert results == [([(RoundStatus.COMPLETED, "")], "")] * 3
    crl_1 = revoked["crls"][1].read_bytes()
    for silo in HOSPITALS:
        assert (tmp_path / "run" / "state" / silo / "revocations.pem").read_bytes() == crl_1


def test_a_silo_holding_a_newer_list_refuses_the_older_one_and_does_not_mask_with_a_revoked_peer(
    revoked: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crl_2 = revoked["crls"][2]
    results = run_round(revoked, tmp_path / "run", held={"st-anne": crl_2, "st-bart": crl_2})
    for silo, (reports, refusal) in zip(HOSPITALS[:2], results[:2], strict=True):
        assert refusal == ""
        ((status, reason),) = reports
        assert status is RoundStatus.ABORTED
        assert (
            "the certificate of peer 'st-clare'" in reason
            and "is revoked by CRL number 2" in reason
        )
        # the coordinator's older list (number 1) was refused; the held one stays in force
        assert (
            tmp_path / "run" / "state" / silo / "revocations.pem"
        ).read_bytes() == crl_2.read_bytes()
    assert "has CRL number 1, older than the held 2; refused" in caplog.text
    # St Clare, who holds nothing, took part as far as the others let her: the round could not complete
    assert [s for s, _ in results[2][0]] == [RoundStatus.ABORTED]


def test_a_silo_holding_a_list_that_revokes_the_coordinator_refuses_it(
    revoked: dict[str, Any], tmp_path: Path
) -> None:
    results = run_round(revoked, tmp_path / "run", held={"st-anne": revoked["crls"][3]})
    reports, refusal = results[0]
    assert reports == []
    assert "the certificate of the coordinator at 127.0.0.1:" in refusal
    assert "is revoked by CRL number 3; this silo stops" in refusal
    assert "\n" not in refusal
