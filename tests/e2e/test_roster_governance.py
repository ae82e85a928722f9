"""Governed roster versions over real mTLS gRPC: a hospital that 2 of 3 governors add joins the next round.

The parties enrol as in ``test_enrolment`` (each in its own directory, only public files travel). The coordinator
and the silos run with ``[governance]``. While round 0 runs, the coordinator's operator installs version 2 (adding
St Dora) into the coordinator's directory; the coordinator adopts it at the next round open and records it in the
ledger, the three running silos fetch it over ``Audit.GetRoster``, check it against their own pinned governors and
pinned version, pin it and carry on, and St Dora takes part from round 1. The exported ledger verifies, and the
same ledger rewritten by a coordinator that holds its audit key, with one governor signature forged, fails
verification only because of that signature (positive control: with the governance check skipped it passes).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits import (
    Anchor,
    CheckpointSigner,
    Event,
    Ledger,
    LedgerEntry,
    VerificationError,
    verify_bundle,
    write_bundle,
)
from audits.report import build_report
from audits.roster import Governance, governance_from_json
from coordinator.cli import EXIT_FAILED, EXIT_UNPINNED
from coordinator.common import RoundStatus, ledger_origin
from coordinator.config import ServeConfig, SiloConfig
from coordinator.errors import ConfigError, Unauthorized
from coordinator.pki import PASSPHRASE_ENV, load_ed25519_private
from coordinator.pki.enrol import install
from coordinator.pki.governance import RosterVersion
from coordinator.rounds.audit import export_bundle, verify_bundle_dir
from coordinator.rounds.roster import governed_roster
from coordinator.sdk.masking import RetryPolicy, RoundContext, Silo
from coordinator.server.app import start_coordinator
from secagg import Roster
from tests.audits.test_report import validate_against_schema
from tests.e2e.harness import exact, expected_model, in_threads, integer_update
from tests.e2e.test_enrolment import (
    FEDERATION,
    HOSPITALS,
    LENGTH,
    Enrolment,
    Party,
    enrol,
    secagg,
)
from tests.e2e.test_errors import secagg as run_secagg

pytestmark = pytest.mark.e2e

NEWCOMER = "st-dora"
RETRY = RetryPolicy(attempts=4, initial=0.1, maximum=0.5)


def governance(d: Path) -> dict[str, str]:
    return {"roster_version": str(d / "roster-version.json"), "file": str(d / "governance.json")}


def serve_config(enrolment: Enrolment, root: Path, rounds: int) -> Path:
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
        # t = 3 is safe for 3 and for 4 silos (t > n / 2), so version 2 keeps the federation's rules
        "rounds": {
            "count": rounds,
            "clip": 32767 / 1024,
            "bits": 16,
            "min_cohort": 3,
            "threshold": 3,
        },
        "governance": governance(d),
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
        "audit_public_key": (d / "audit.pub").read_text(encoding="ascii").strip(),
        "state_dir": str(root / "state" / silo.name),
        "tls": {"ca": str(d / "ca.pem"), "cert": str(d / "cert.pem"), "key": str(d / "key.pem")},
        "policy": {"min_cohort": 3, "max_collusion_assumed": 0},
        "task": {"shard": index, "num_shards": 4},
        "governance": governance(d),
    }
    path = root / f"silo-{silo.name}.toml"
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return path


def enrol_newcomer(enrolment: Enrolment, root: Path, *, signers: int) -> tuple[Party, Path]:
    """St Dora enrols; the CA proposes version 2 adding her and ``signers`` governors sign it."""
    ca, mailbox = enrolment.ca, enrolment.mailbox
    newcomer = Party(NEWCOMER, root / NEWCOMER, root / "dora-passphrase")
    newcomer.passphrase_file.write_text("passphrase of st-dora\n", encoding="utf-8")
    newcomer.passphrase_file.chmod(0o600)
    secagg(
        newcomer,
        "pki",
        "request",
        str(newcomer.directory),
        "--id",
        NEWCOMER,
        "--role",
        "silo",
        "--federation",
        FEDERATION,
    )
    request_file, issued = mailbox / "st-dora.request.json", mailbox / "st-dora.issued.json"
    request_file.write_bytes((newcomer.directory / "request.json").read_bytes())
    secagg(ca, "pki", "sign", str(ca.directory), str(request_file), "--out", str(issued), "--yes")
    secagg(newcomer, "pki", "install", str(newcomer.directory), str(issued))
    v2 = mailbox / "roster-v2.json"
    secagg(ca, "pki", "roster", "propose", str(ca.directory), "--add", NEWCOMER, "--out", str(v2))
    for g in enrolment.governors[1 : 1 + signers]:  # another pair of governors than version 1's
        secagg(g, "pki", "roster", "sign", str(g.directory), str(v2), "--yes")
    return newcomer, v2


def wait_for(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def federation_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three rounds; version 2 (St Dora) is installed in the coordinator's directory while round 0 runs."""
    root = tmp_path_factory.mktemp("roster-governance")
    (root / "enrolment").mkdir()
    enrolment = enrol(root / "enrolment")
    newcomer, v2 = enrol_newcomer(enrolment, root / "enrolment", signers=2)
    federation_v2 = enrolment.mailbox / "federation-v2.json"
    secagg(
        enrolment.ca,
        "pki",
        "publish",
        str(enrolment.ca.directory),
        "--roster",
        str(v2),
        "--out",
        str(federation_v2),
    )
    secagg(newcomer, "pki", "install", str(newcomer.directory), str(federation_v2))
    run = root / "run"
    run.mkdir()
    rounds = 3
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PASSPHRASE_ENV, str(enrolment.coordinator.passphrase_file))
        serve = ServeConfig.load(serve_config(enrolment, run, rounds))
        coordinator = start_coordinator(serve)
        try:
            address = f"127.0.0.1:{coordinator.port}"
            silos = (*enrolment.silos, newcomer)
            configs = [
                silo_config(s, i, address, run) for i, s in enumerate(silos)
            ]  # the newcomer's is written now, loaded once she is on the roster
            clients: list[Silo] = []
            for index, silo in enumerate(enrolment.silos):
                mp.setenv(PASSPHRASE_ENV, str(silo.passphrase_file))
                clients.append(Silo.from_config(SiloConfig.load(configs[index]), retry=RETRY))
            units = {
                (i, r): integer_update(10 * r + i, LENGTH) for r in range(rounds) for i in range(4)
            }
            installed = threading.Event()

            def run_silo(index: int) -> list[tuple[int, RoundStatus]]:
                def train(ctx: RoundContext) -> npt.NDArray[np.float64]:
                    if index == 0 and ctx.round == 0:
                        # the coordinator's operator installs version 2 mid-round (`secagg pki install`)
                        install(enrolment.coordinator.directory, v2)
                        installed.set()
                    return exact(units[index, ctx.round])

                with clients[index] as client:
                    return [(r.round, r.status) for r in client.run(train)]

            def run_newcomer() -> list[tuple[int, RoundStatus]]:
                installed.wait(60)
                wait_for(lambda: NEWCOMER in coordinator.service.roster.members)
                with Silo.from_config(newcomer_config, retry=RETRY) as client:

                    def train(ctx: RoundContext) -> npt.NDArray[np.float64]:
                        return exact(units[3, ctx.round])

                    return [(r.round, r.status) for r in client.run(train)]

            mp.setenv(PASSPHRASE_ENV, str(newcomer.passphrase_file))
            newcomer_config = SiloConfig.load(configs[3])
            statuses = in_threads(
                *[lambda i=i: run_silo(i) for i in range(3)], run_newcomer, timeout=150
            )
            coordinator.service.wait_finished(10)
            records = coordinator.store.rounds(FEDERATION)
            models = [coordinator.store.model(FEDERATION, r)[0] for r in range(rounds + 1)]
        finally:
            coordinator.stop()
        mp.setenv(PASSPHRASE_ENV, str(enrolment.coordinator.passphrase_file))
        bundle = root / "bundle"
        export_bundle(serve, bundle)
        audit_key = load_ed25519_private(serve.audit_key)
    return {
        "enrolment": enrolment,
        "newcomer": newcomer,
        "statuses": statuses,
        "records": records,
        "models": models,
        "units": units,
        "bundle": bundle,
        "audit_key": audit_key,
        "serve": serve,
    }


def test_a_hospital_two_of_three_governors_add_joins_the_next_round_while_the_others_keep_running(
    federation_run: dict[str, Any],
) -> None:
    statuses, records, models, units = (
        federation_run[k] for k in ("statuses", "records", "models", "units")
    )
    done = RoundStatus.COMPLETED
    assert statuses[:3] == [[(0, done), (1, done), (2, done)]] * 3  # no silo restarted
    assert statuses[3] == [(1, done), (2, done)]
    assert [r.survivors for r in records] == [
        HOSPITALS,
        (*HOSPITALS, NEWCOMER),
        (*HOSPITALS, NEWCOMER),
    ]
    assert np.array_equal(models[1], expected_model(models[0], [units[i, 0] for i in range(3)]))
    for r in (1, 2):
        assert np.array_equal(
            models[r + 1], expected_model(models[r], [units[i, r] for i in range(4)])
        )
    # every running silo pinned version 2 in its own directory, as `secagg pki install` would have
    for silo in federation_run["enrolment"].silos:
        pinned = RosterVersion.load(silo.directory / "roster-version.json")
        assert (pinned.version, list(pinned.roster.members)) == (2, [*HOSPITALS, NEWCOMER])


def entries(bundle: Path) -> list[LedgerEntry]:
    return [
        LedgerEntry.decode(line)
        for line in (bundle / "entries.jsonl").read_bytes().splitlines()
        if line
    ]


def pinned_governance(federation_run: dict[str, Any]) -> Governance:
    """What an auditor pins: the governance the federation was created with (the CA's governance.json, unless a
    run handed over to another one since)."""
    if "governance" in federation_run:
        return cast(Governance, federation_run["governance"])
    ca = federation_run["enrolment"].ca.directory
    return governance_from_json(json.loads((ca / "governance.json").read_text()))


def verify(federation_run: dict[str, Any], bundle: Path, **options: Any) -> Any:
    serve = federation_run["serve"]
    return verify_bundle_dir(
        bundle,
        audit_public_key=federation_run["audit_key"].public_key().public_bytes_raw(),
        consortium_public_key=serve.consortium_public_key,
        federation=FEDERATION,
        **({"governance": pinned_governance(federation_run)} | options),
    )


def test_the_roster_change_is_in_the_ledger_with_its_signatures_and_verifies(
    federation_run: dict[str, Any],
) -> None:
    bundle = federation_run["bundle"]
    changes = [e for e in entries(bundle) if e.event.kind == "roster_changed"]
    assert len(changes) == 1
    body = changes[0].event.body
    assert (body["version"], list(body["added"]), list(body["removed"])) == (2, [NEWCOMER], [])
    assert body["first_round"] == 1 and len(body["signers"]) == 2
    created = entries(bundle)[0].event.body
    assert created["governance"]["quorum"] == 2
    report, warnings = verify(federation_run, bundle)
    assert report.federation == FEDERATION and report.anchors.fully_pinned and not warnings
    shown = build_report(report)
    assert [(c["version"], c["added"], c["first_round"]) for c in shown["roster_changes"]] == [
        (2, [NEWCOMER], 1)
    ]
    governors, quorum = pinned_governance(federation_run)
    assert shown["verification"]["anchors"]["governance"] == {
        "pinned": True,
        "quorum": quorum,
        "governors": [hashlib.sha256(g).hexdigest() for g in governors],
    }
    assert (
        f"the roster governance ({quorum} of {len(governors)} governors)"
        in (shown["verification"]["statement"])
    )
    validate_against_schema(shown)  # the published schema, governance anchor included


def rewritten(federation_run: dict[str, Any], out: Path, edit: Any) -> Path:
    """The ledger as a dishonest coordinator holding its audit key would rewrite and re-sign it."""
    ledger = Ledger(out.with_suffix(".sqlite"), origin=ledger_origin(FEDERATION))
    for entry in entries(federation_run["bundle"]):
        event = entry.event.to_json()
        body = edit(event["kind"], event["body"])
        ledger.append(
            Event(event["kind"], event["federation"], event["round"], body, event["time"])
        )
    signer = CheckpointSigner(federation_run["audit_key"], key_name=ledger_origin(FEDERATION))
    ledger.checkpoint(signer)
    write_bundle(
        ledger,
        out,
        roster_bytes=(federation_run["bundle"] / "roster.json").read_bytes(),
        audit_public_key=signer.public_key,
    )
    ledger.close()
    return out


def test_a_forged_governor_signature_in_the_ledger_fails_verification(
    federation_run: dict[str, Any], tmp_path: Path
) -> None:
    def forge(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind != "roster_changed":
            return body
        version = json.loads(body["roster_version"])
        first = sorted(version["signatures"])[0]
        signature = bytearray(bytes.fromhex(version["signatures"][first]))
        signature[0] ^= 1
        version["signatures"][first] = signature.hex()
        return body | {"roster_version": json.dumps(version)}

    honest = rewritten(federation_run, tmp_path / "honest", lambda kind, body: body)
    verify(federation_run, honest)  # the rewriting itself changes nothing a verifier checks
    forged = rewritten(federation_run, tmp_path / "forged", forge)
    with pytest.raises(VerificationError) as exc:
        verify(federation_run, forged)
    message = str(exc.value)
    assert "roster change refused" in message
    assert "1 valid governor signature(s) of the 2 required" in message
    # positive control: the same forged ledger passes when the governance check is skipped
    roster = Roster.loads((forged / "roster.json").read_text())
    verify_bundle(
        forged,
        silo_keys=dict(roster.members),
        audit_public_key=federation_run["audit_key"].public_key().public_bytes_raw(),
        insecure_skip_roster_governance=True,
    )


def test_a_coordinator_that_names_its_own_governors_is_caught_by_the_pinned_governance(
    federation_run: dict[str, Any], tmp_path: Path
) -> None:
    """The attack: a coordinator holding the audit key rewrites ``federation_created`` with a governor key of its
    own (quorum 1), signs every roster version with it and re-signs the log. Each version's roster is still the
    consortium-signed one, so only the governance is forged."""
    mallory = Ed25519PrivateKey.generate()
    own = mallory.public_key().public_bytes_raw().hex()

    def resign(text: str) -> str:
        version = RosterVersion.loads(text)
        return (
            RosterVersion(version.version, version.previous, version.roster, {}, version.governance)
            .signed_by(mallory)
            .dumps()
        )

    def usurp(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind == "federation_created":
            governance = body["governance"]
            return body | {
                "governance": governance
                | {
                    "governors": [own],
                    "quorum": 1,
                    "roster_version": resign(governance["roster_version"]),
                }
            }
        if kind == "roster_changed":
            return body | {"roster_version": resign(body["roster_version"]), "signers": [own]}
        return body

    usurped = rewritten(federation_run, tmp_path / "usurped", usurp)
    # positive control: without the governance pin every check passes, and the report shows mallory's 1-of-1
    report, warnings = verify(federation_run, usurped, governance=None)
    assert report.anchors.governance == ((bytes.fromhex(own),), 1)
    assert not report.anchors.fully_pinned
    assert report.anchors.unpinned == (Anchor.GOVERNANCE,)
    assert any("governance is not pinned" in w for w in warnings)
    with pytest.raises(VerificationError) as exc:
        verify(federation_run, usurped)
    assert str(exc.value).startswith(
        "entry 0: governance: federation_created names 1 governor(s) with quorum 1, not the pinned "
        "governance (3 governors, quorum 2)"
    )
    # the honest ledger pins its governance, and the CLI says so
    honest = federation_run["bundle"]
    done = secagg_cli(
        federation_run,
        "audit",
        "verify",
        str(honest),
        "--governance",
        str(federation_run["enrolment"].ca.directory / "governance.json"),
    )
    assert done.returncode == 0, done.stderr
    assert "pinned: audit key, consortium key, log origin and roster governance" in done.stdout
    forged = secagg_cli(
        federation_run,
        "audit",
        "verify",
        str(usurped),
        "--governance",
        str(federation_run["enrolment"].ca.directory / "governance.json"),
    )
    assert forged.returncode == EXIT_FAILED and "not the pinned governance" in forged.stderr
    unpinned = secagg_cli(federation_run, "audit", "verify", str(honest))
    assert unpinned.returncode == EXIT_UNPINNED and "NOT PINNED: governance" in unpinned.stdout


def secagg_cli(federation_run: dict[str, Any], *argv: str) -> subprocess.CompletedProcess[str]:
    """``secagg`` as an auditor runs it, pinning the audit key, consortium key and federation."""
    serve = federation_run["serve"]
    audit = federation_run["audit_key"].public_key().public_bytes_raw().hex()
    pins = [
        "--audit-key",
        audit,
        "--consortium-key",
        serve.consortium_public_key.hex(),
        "--federation",
        FEDERATION,
    ]
    return run_secagg(*argv, *pins)


def test_a_roster_change_that_skips_a_version_in_the_ledger_fails_verification(
    federation_run: dict[str, Any], tmp_path: Path
) -> None:
    def renumber(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind != "roster_changed":
            return body
        version = json.loads(body["roster_version"])
        version["version"] = 3  # its signatures no longer cover it either way
        return body | {"roster_version": json.dumps(version)}

    with pytest.raises(VerificationError, match="roster change refused"):
        verify(federation_run, rewritten(federation_run, tmp_path / "skipped", renumber))


def test_running_silos_refuse_a_version_one_governor_signed_that_a_lying_coordinator_serves(
    tmp_path: Path,
) -> None:
    """The coordinator is given a quorum of 1 (its operator lies about the governance); the silos pin 2."""
    (tmp_path / "enrolment").mkdir()
    enrolment = enrol(tmp_path / "enrolment")
    _, v2 = enrol_newcomer(enrolment, tmp_path / "enrolment", signers=1)
    d = enrolment.coordinator.directory
    lying = json.loads((d / "governance.json").read_text()) | {"quorum": 1}
    (d / "governance.json").write_text(json.dumps(lying))
    run = tmp_path / "run"
    run.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PASSPHRASE_ENV, str(enrolment.coordinator.passphrase_file))
        coordinator = start_coordinator(ServeConfig.load(serve_config(enrolment, run, 2)))
        try:
            address = f"127.0.0.1:{coordinator.port}"
            clients = []
            for index, silo in enumerate(enrolment.silos):
                mp.setenv(PASSPHRASE_ENV, str(silo.passphrase_file))
                config = SiloConfig.load(silo_config(silo, index, address, run))
                clients.append(Silo.from_config(config, retry=RETRY))
            pinned = [(s.directory / "roster-version.json").read_bytes() for s in enrolment.silos]

            def run_silo(index: int) -> tuple[list[RoundStatus], str]:
                statuses: list[RoundStatus] = []

                def train(ctx: RoundContext) -> npt.NDArray[np.float64]:
                    if index == 0 and ctx.round == 0:
                        # copied over the file: `secagg pki install` would refuse it
                        (d / "roster-version.json").write_bytes(v2.read_bytes())
                    return exact(integer_update(index, LENGTH))

                with clients[index] as client:
                    try:
                        for report in client.run(train):
                            statuses.append(report.status)
                    except Unauthorized as exc:
                        return statuses, str(exc)
                return statuses, ""

            results = in_threads(*[lambda i=i: run_silo(i) for i in range(3)], timeout=120)
            # the coordinator, trusting its quorum of 1, adopted version 2 ...
            assert coordinator.service.governance is not None
            assert coordinator.service.governance.current.version == 2
        finally:
            coordinator.stop()
    # ... and every silo took part in round 0, then refused round 1 with one line, its pins unchanged
    for (statuses, refusal), silo, before in zip(results, enrolment.silos, pinned, strict=True):
        assert statuses == [RoundStatus.COMPLETED]
        assert "refused the roster versions the coordinator serves" in refusal
        assert "1 valid governor signature(s) of the 2 required" in refusal
        assert "\n" not in refusal
        assert (silo.directory / "roster-version.json").read_bytes() == before


def test_a_restarted_coordinator_rebuilds_its_chain_from_the_ledger_and_checks_it_again(
    federation_run: dict[str, Any], tmp_path: Path
) -> None:
    serve = federation_run["serve"]
    roster = governed_roster(serve)
    assert roster is not None
    # the coordinator's directory now pins version 2 (installed mid-federation); the ledger says how it got there
    assert roster.current.version == 2
    current = roster.resume(entries(federation_run["bundle"]))
    assert current.version == 2
    assert [v.version for v in roster.chain()] == [1, 2]
    assert [v.version for v in roster.chain(since=1)] == [2]

    def one_signature(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind != "roster_changed":
            return body
        version = json.loads(body["roster_version"])
        version["signatures"] = dict(sorted(version["signatures"].items())[:1])
        return body | {"roster_version": json.dumps(version)}

    forged = rewritten(federation_run, tmp_path / "forged", one_signature)
    with pytest.raises(ConfigError) as exc:
        governed_roster(serve).resume(entries(forged))  # type: ignore[union-attr]
    assert "1 valid governor signature(s) of the 2 required" in str(exc.value)


def test_a_roster_change_in_a_federation_created_without_governance_fails_verification(
    federation_run: dict[str, Any], tmp_path: Path
) -> None:
    def ungoverned(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind != "federation_created":
            return body
        return {k: v for k, v in body.items() if k != "governance"}

    stripped = rewritten(federation_run, tmp_path / "ungoverned", ungoverned)
    with pytest.raises(VerificationError, match="created without governance: nobody may change it"):
        verify(federation_run, stripped, governance=None)
    with pytest.raises(
        VerificationError, match="created without governance, but a governance was pinned"
    ):
        verify(federation_run, stripped)
