"""Enrolment across organisations, scripted with the ``secagg pki`` commands, then a federation on the result.

Three governors, a CA operator, a coordinator and three hospitals each work in their own directory with their
own passphrase file; only public files (``governor.pub``, ``request.json``, the issued certificate, the
federation file) are handed between them. Afterwards no private key exists outside its owner's directory, and
the coordinator and the silos, configured from nothing but what they hold, run two rounds over mTLS.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tomli_w
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.common import RoundStatus
from coordinator.config import ServeConfig, SiloConfig
from coordinator.pki import PASSPHRASE_ENV, load_private_key
from coordinator.sdk.masking import RetryPolicy, RoundContext, Silo
from coordinator.server.app import start_coordinator
from tests.e2e.harness import exact, expected_model, in_threads, integer_update

pytestmark = pytest.mark.e2e

FEDERATION = "hospitals"
HOSPITALS = ("st-anne", "st-bart", "st-clare")
GOVERNORS = ("gov-1", "gov-2", "gov-3")
LENGTH = 600


@dataclass(frozen=True)
class Party:
    """One organisation: its own directory and its own passphrase file (kept outside every directory)."""

    name: str
    directory: Path
    passphrase_file: Path

    @property
    def env(self) -> dict[str, str]:
        return {PASSPHRASE_ENV: str(self.passphrase_file)}


@dataclass(frozen=True)
class Enrolment:
    ca: Party
    governors: tuple[Party, ...]
    coordinator: Party
    silos: tuple[Party, ...]
    mailbox: Path  # what travels between the parties: public files only

    @property
    def parties(self) -> tuple[Party, ...]:
        return (self.ca, *self.governors, self.coordinator, *self.silos)


def secagg(party: Party, *args: str) -> str:
    """Run ``secagg ARGS`` as ``party`` (its passphrase file, no terminal); fail the test on a non-zero exit."""
    result = CliRunner().invoke(app, list(args), env=party.env)
    assert result.exit_code == 0, (args, result.output, result.stderr)
    return result.stdout


def enrol(root: Path) -> Enrolment:
    """The full command sequence of the README's "Production enrolment", one party at a time."""
    secrets_dir = root / "passphrases"
    secrets_dir.mkdir()

    def party(name: str) -> Party:
        passphrase = secrets_dir / name
        passphrase.write_text(f"passphrase of {name} {os.urandom(8).hex()}\n", encoding="utf-8")
        passphrase.chmod(0o600)
        return Party(name, root / name, passphrase)

    mailbox = root / "mailbox"
    mailbox.mkdir()
    governors = tuple(party(g) for g in GOVERNORS)
    ca = party("ca")
    coordinator = party("coordinator")
    silos = tuple(party(h) for h in HOSPITALS)

    for g in governors:  # 1. each governor, on its own machine
        secagg(g, "pki", "governor", "init", str(g.directory))
        (mailbox / f"{g.name}.pub").write_bytes((g.directory / "governor.pub").read_bytes())
    governor_args = [a for g in governors for a in ("--governor", str(mailbox / f"{g.name}.pub"))]
    created = secagg(  # 2. the CA operator
        ca,
        "pki",
        "ca",
        "init",
        str(ca.directory),
        "--federation",
        FEDERATION,
        "--governors",
        "3",
        "--quorum",
        "2",
        *governor_args,
    )
    (ca_fingerprint,) = re.findall(r"CA certificate .* sha256 ([0-9a-f]{64})", created)
    for org, role in [(coordinator, "coordinator"), *((s, "silo") for s in silos)]:
        hosts = ["--host", "localhost", "--host", "127.0.0.1"] if role == "coordinator" else []
        told = secagg(  # 3. each organisation makes its keys and request
            org,
            "pki",
            "request",
            str(org.directory),
            "--id",
            org.name,
            "--role",
            role,
            "--federation",
            FEDERATION,
            *hosts,
        )
        (mailbox / f"{org.name}.request.json").write_bytes(
            (org.directory / "request.json").read_bytes()
        )
        shown = secagg(  # 4. the CA checks the proofs and the fingerprints, and issues
            ca,
            "pki",
            "sign",
            str(ca.directory),
            str(mailbox / f"{org.name}.request.json"),
            "--out",
            str(mailbox / f"{org.name}.issued.json"),
            "--yes",
        )
        fingerprints = re.findall(r"sha256 ([0-9a-f]{64})", told)
        assert fingerprints and fingerprints == re.findall(r"sha256 ([0-9a-f]{64})", shown)
        secagg(
            org,
            "pki",
            "install",
            str(org.directory),
            str(mailbox / f"{org.name}.issued.json"),
            "--ca-fingerprint",
            ca_fingerprint,  # read out by the CA operator, confirmed out of band
        )
    version = str(mailbox / "roster-v1.json")
    secagg(ca, "pki", "roster", "propose", str(ca.directory), "--out", version)
    for g in governors[:2]:  # 2 of the 3 governors approve version 1, each in its own directory
        secagg(g, "pki", "roster", "sign", str(g.directory), version, "--yes")
    secagg(
        ca,
        "pki",
        "publish",
        str(ca.directory),
        "--roster",
        version,
        "--out",
        str(mailbox / "federation.json"),
    )
    for org in (coordinator, *silos):  # 5. every member installs the public federation file
        secagg(org, "pki", "install", str(org.directory), str(mailbox / "federation.json"))
    return Enrolment(ca, governors, coordinator, silos, mailbox)


def private_key_files(directory: Path) -> list[Path]:
    return [
        p for p in directory.rglob("*") if p.is_file() and b"PRIVATE KEY-----" in p.read_bytes()
    ]


@pytest.fixture(scope="module")
def enrolment(tmp_path_factory: pytest.TempPathFactory) -> Enrolment:
    return enrol(tmp_path_factory.mktemp("enrolment"))


def test_every_private_key_stays_in_its_owners_directory_encrypted_and_0600(
    enrolment: Enrolment,
) -> None:
    expected = {
        "ca": {"ca.key", "consortium.key"},
        "coordinator": {"key.pem", "signing.key", "audit.key"},
        **{g: {"governor.key"} for g in GOVERNORS},
        **{h: {"key.pem", "signing.key"} for h in HOSPITALS},
    }
    assert not private_key_files(enrolment.mailbox)
    for party in enrolment.parties:
        keys = private_key_files(party.directory)
        assert {k.name for k in keys} == expected[party.name], party.name
        for key in keys:
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
            assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"), key
            # The key opens with its owner's passphrase only.
            private = load_private_key(key, party.passphrase_file.read_bytes().splitlines()[0])
            raw = private.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            for other in enrolment.parties:
                if other is party:
                    continue
                for path in [p for p in other.directory.rglob("*") if p.is_file()]:
                    content = path.read_bytes()
                    assert key.read_bytes() not in content, (key, path)
                    assert raw not in content, (key, path)
            for path in enrolment.mailbox.iterdir():
                assert raw not in path.read_bytes()


def _silo_config(silos: int, silo: Party, index: int, address: str, root: Path) -> Path:
    d = silo.directory
    doc: dict[str, Any] = {
        "silo": silo.name,
        "coordinator": address,
        "federation": FEDERATION,
        "roster": str(d / "roster.json"),
        "consortium_public_key": (d / "consortium.pub").read_text(encoding="ascii").strip(),
        "signing_key": str(d / "signing.key"),
        "audit_public_key": (d / "audit.pub").read_text(encoding="ascii").strip(),
        "state_dir": str(root / "state" / silo.name),
        "tls": {"ca": str(d / "ca.pem"), "cert": str(d / "cert.pem"), "key": str(d / "key.pem")},
        "policy": {"min_cohort": 3, "max_collusion_assumed": 0},
        "task": {"shard": index, "num_shards": silos},
    }
    path = root / f"silo-{silo.name}.toml"
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return path


def _serve_config(enrolment: Enrolment, root: Path, rounds: int) -> Path:
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
        "rounds": {"count": rounds, "clip": 32767 / 1024, "bits": 16, "min_cohort": 3},
    }
    path = root / "serve.toml"
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return path


def run_federation(
    enrolment: Enrolment,
    silos: tuple[Party, ...],
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    rounds: int,
) -> tuple[list[list[RoundStatus]], list[Any], list[npt.NDArray[np.float32]], dict[Any, Any]]:
    """Run ``rounds`` rounds: the coordinator and each silo load only what their own directory holds."""
    root.mkdir(parents=True, exist_ok=True)
    # Each party loads its own keys under its own passphrase: the coordinator first, then every silo.
    monkeypatch.setenv(PASSPHRASE_ENV, str(enrolment.coordinator.passphrase_file))
    coordinator = start_coordinator(ServeConfig.load(_serve_config(enrolment, root, rounds)))
    try:
        address = f"127.0.0.1:{coordinator.port}"
        clients: list[Silo] = []
        for index, silo in enumerate(silos):
            monkeypatch.setenv(PASSPHRASE_ENV, str(silo.passphrase_file))
            config = SiloConfig.load(_silo_config(len(silos), silo, index, address, root))
            clients.append(
                Silo.from_config(config, retry=RetryPolicy(attempts=4, initial=0.1, maximum=0.5))
            )
        units = {
            (i, r): integer_update(10 * r + i, LENGTH)
            for r in range(rounds)
            for i in range(len(silos))
        }

        def run(index: int) -> list[RoundStatus]:
            def train(ctx: RoundContext) -> npt.NDArray[np.float64]:
                return exact(units[index, ctx.round])

            with clients[index] as client:
                return [report.status for report in client.run(train)]

        statuses = in_threads(*[lambda i=i: run(i) for i in range(len(silos))], timeout=120)
        coordinator.service.wait_finished(10)
        records = coordinator.store.rounds(FEDERATION)
        models = [coordinator.store.model(FEDERATION, r)[0] for r in range(rounds + 1)]
    finally:
        coordinator.stop()
    return statuses, records, models, units


def test_a_federation_runs_two_rounds_over_mtls_with_the_installed_material(
    enrolment: Enrolment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    statuses, records, models, units = run_federation(
        enrolment, enrolment.silos, tmp_path, monkeypatch, rounds=2
    )
    assert statuses == [[RoundStatus.COMPLETED] * 2] * 3
    assert [r.status for r in records] == [RoundStatus.COMPLETED] * 2
    for r in range(2):
        assert records[r].survivors == HOSPITALS
        assert np.array_equal(
            models[r + 1], expected_model(models[r], [units[i, r] for i in range(3)])
        )


def test_a_hospital_added_by_two_of_three_governors_takes_part_in_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "enrolment").mkdir()
    enrolment = enrol(tmp_path / "enrolment")
    ca, mailbox = enrolment.ca, enrolment.mailbox
    newcomer = Party("st-dora", tmp_path / "enrolment" / "st-dora", tmp_path / "dora-passphrase")
    newcomer.passphrase_file.write_text("passphrase of st-dora\n", encoding="utf-8")
    newcomer.passphrase_file.chmod(0o600)
    secagg(
        newcomer,
        "pki",
        "request",
        str(newcomer.directory),
        "--id",
        newcomer.name,
        "--role",
        "silo",
        "--federation",
        FEDERATION,
    )
    request_file, issued = mailbox / "st-dora.request.json", mailbox / "st-dora.issued.json"
    request_file.write_bytes((newcomer.directory / "request.json").read_bytes())
    secagg(ca, "pki", "sign", str(ca.directory), str(request_file), "--out", str(issued), "--yes")
    secagg(newcomer, "pki", "install", str(newcomer.directory), str(issued))
    v2 = str(mailbox / "roster-v2.json")
    secagg(ca, "pki", "roster", "propose", str(ca.directory), "--add", "st-dora", "--out", v2)
    for g in enrolment.governors[1:]:  # another pair of governors this time
        secagg(g, "pki", "roster", "sign", str(g.directory), v2, "--yes")
    for org in (enrolment.coordinator, *enrolment.silos):
        assert "installed roster version 2 of 4 silos" in secagg(
            org, "pki", "install", str(org.directory), v2
        )
    federation_v2 = str(mailbox / "federation-v2.json")
    secagg(ca, "pki", "publish", str(ca.directory), "--roster", v2, "--out", federation_v2)
    secagg(newcomer, "pki", "install", str(newcomer.directory), federation_v2)

    silos = (*enrolment.silos, newcomer)
    statuses, records, models, units = run_federation(
        enrolment, silos, tmp_path / "run", monkeypatch, rounds=1
    )
    assert statuses == [[RoundStatus.COMPLETED]] * 4
    assert records[0].survivors == (*HOSPITALS, "st-dora")
    assert np.array_equal(models[1], expected_model(models[0], [units[i, 0] for i in range(4)]))
