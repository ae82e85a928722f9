"""A silo rotates its roster key while the federation runs over real mTLS gRPC, through a governed roster version.

The parties enrol as in ``test_enrolment`` (each in its own directory, only public files travel). Before the run,
St Anne makes a new roster key beside her live one (``secagg pki request --rotate``), the CA operator records it
(``pki sign``) and proposes version 2 (``pki roster propose --rotate st-anne``), and two of the three governors
sign it. St Anne starts on her live key. While round 0 runs the coordinator's operator installs version 2; the
coordinator adopts it at the open of round 1 and records the rotation in the ledger; every running silo fetches
and checks it; St Anne sees that it lists her new key and signs round 1 and later with it. Every silo sends a
signed privacy attestation with each upload (the coordinator checks it under the roster in force). Her attestations of
round 0 verify under the old key and those of rounds 1 and 2 under the new one only, and the exported ledger
verifies. The same ledger rewritten with a flipped governor signature on the rotation fails verification only
because of it (positive control: with the governance check skipped it verifies).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audits import VerificationError, verify_bundle
from audits.report import build_report
from coordinator.common import RoundStatus
from coordinator.config import ServeConfig, SiloConfig
from coordinator.pki import PASSPHRASE_ENV, load_ed25519_private
from coordinator.pki.enrol import install
from coordinator.pki.governance import RosterVersion
from coordinator.rounds.audit import export_bundle
from coordinator.sdk.masking import RoundContext, Silo
from coordinator.server.app import start_coordinator
from secagg import Roster
from tests.e2e.harness import exact, expected_model, in_threads, integer_update
from tests.e2e.test_enrolment import FEDERATION, HOSPITALS, LENGTH, enrol, secagg
from tests.e2e.test_privacy_attestation import STEP, DpUpdate
from tests.e2e.test_roster_governance import (
    RETRY,
    entries,
    rewritten,
    serve_config,
    silo_config,
    verify,
)

pytestmark = pytest.mark.e2e

ROTATING = HOSPITALS[0]


def public(path: Path) -> bytes:
    return load_ed25519_private(path).public_key().public_bytes_raw()


@pytest.fixture(scope="module")
def federation_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("key-rotation")
    (root / "enrolment").mkdir()
    enrolment = enrol(root / "enrolment")
    ca, mailbox = enrolment.ca, enrolment.mailbox
    anne = enrolment.silos[0]
    assert anne.name == ROTATING
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PASSPHRASE_ENV, str(anne.passphrase_file))
        old_key = public(anne.directory / "signing.key")
    printed = secagg(
        anne,
        "pki",
        "request",
        str(anne.directory),
        "--id",
        ROTATING,
        "--role",
        "silo",
        "--federation",
        FEDERATION,
        "--rotate",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PASSPHRASE_ENV, str(anne.passphrase_file))
        new_key = public(anne.directory / "signing.key.next")
    assert hashlib.sha256(new_key).hexdigest() in printed  # what she confirms by phone
    rotation = mailbox / "st-anne.rotation.json"
    rotation.write_bytes((anne.directory / "rotation.json").read_bytes())
    signed = secagg(
        ca,
        "pki",
        "sign",
        str(ca.directory),
        str(rotation),
        "--out",
        str(mailbox / "r.json"),
        "--yes",
    )
    assert "key rotation of silo 'st-anne'" in signed
    v2 = mailbox / "roster-v2.json"
    secagg(
        ca, "pki", "roster", "propose", str(ca.directory), "--rotate", ROTATING, "--out", str(v2)
    )
    for g in enrolment.governors[1:]:
        secagg(g, "pki", "roster", "sign", str(g.directory), str(v2), "--yes")
    run = root / "run"
    run.mkdir()
    rounds = 3
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PASSPHRASE_ENV, str(enrolment.coordinator.passphrase_file))
        serve = ServeConfig.load(serve_config(enrolment, run, rounds))
        coordinator = start_coordinator(serve)
        try:
            address = f"127.0.0.1:{coordinator.port}"
            clients: list[Silo] = []
            for index, silo in enumerate(enrolment.silos):
                mp.setenv(PASSPHRASE_ENV, str(silo.passphrase_file))
                config = SiloConfig.load(silo_config(silo, index, address, run))
                clients.append(Silo.from_config(config, retry=RETRY))
            units = {
                (i, r): integer_update(10 * r + i, LENGTH) for r in range(rounds) for i in range(3)
            }
            installed = threading.Event()

            def run_silo(index: int) -> list[tuple[int, RoundStatus]]:
                def train(ctx: RoundContext) -> DpUpdate:
                    if index == 0 and ctx.round == 0:
                        # the coordinator's operator installs version 2 mid-round (`secagg pki install`)
                        install(enrolment.coordinator.directory, v2)
                        installed.set()
                    # a private update: its signed privacy attestation is checked and recorded
                    return DpUpdate(exact(units[index, ctx.round]), (STEP,) * (ctx.round + 1))

                with clients[index] as client:
                    return [(r.round, r.status) for r in client.run(train)]

            statuses = in_threads(*[lambda i=i: run_silo(i) for i in range(3)], timeout=150)
            coordinator.service.wait_finished(10)
            models = [coordinator.store.model(FEDERATION, r)[0] for r in range(rounds + 1)]
        finally:
            coordinator.stop()
        mp.setenv(PASSPHRASE_ENV, str(enrolment.coordinator.passphrase_file))
        bundle = root / "bundle"
        export_bundle(serve, bundle)
        audit_key = load_ed25519_private(serve.audit_key)
        mp.setenv(PASSPHRASE_ENV, str(anne.passphrase_file))
        live_after = public(anne.directory / "signing.key")
    assert installed.is_set()
    return {
        "enrolment": enrolment,
        "statuses": statuses,
        "models": models,
        "units": units,
        "bundle": bundle,
        "audit_key": audit_key,
        "serve": serve,
        "old_key": old_key,
        "new_key": new_key,
        "live_after": live_after,
    }


def test_a_silo_rotating_its_key_keeps_running_and_signs_from_the_adopted_version_on(
    federation_run: dict[str, Any],
) -> None:
    statuses, models, units = (federation_run[k] for k in ("statuses", "models", "units"))
    done = RoundStatus.COMPLETED
    assert statuses == [[(0, done), (1, done), (2, done)]] * 3  # nobody restarted or dropped out
    for r in range(3):
        assert np.array_equal(
            models[r + 1], expected_model(models[r], [units[i, r] for i in range(3)])
        )
    enrolment, new_key = federation_run["enrolment"], federation_run["new_key"]
    anne = enrolment.silos[0].directory
    # St Anne's directory: the new key is the live one, nothing is pending, the pins are version 2
    assert federation_run["live_after"] == new_key != federation_run["old_key"]
    assert not (anne / "signing.key.next").exists() and not (anne / "rotation.json").exists()
    for silo in enrolment.silos:
        pinned = RosterVersion.load(silo.directory / "roster-version.json")
        assert (pinned.version, pinned.roster.members[ROTATING]) == (2, new_key)


def attestations(bundle: Path) -> dict[int, tuple[bytes, bytes]]:
    """St Anne's attestations by round: (signed payload, signature)."""
    out = {}
    for entry in entries(bundle):
        body = entry.event.body
        if entry.event.kind == "privacy_attestation" and body["silo"] == ROTATING:
            assert entry.event.round is not None
            out[entry.event.round] = (
                bytes.fromhex(body["signing_payload"]),
                bytes.fromhex(body["signature"]),
            )
    return out


def signs(key: bytes, payload: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def test_attestations_verify_under_the_old_key_before_the_rotation_and_the_new_key_after(
    federation_run: dict[str, Any],
) -> None:
    old, new = federation_run["old_key"], federation_run["new_key"]
    signed = attestations(federation_run["bundle"])
    assert sorted(signed) == [0, 1, 2]
    assert signs(old, *signed[0]) and not signs(new, *signed[0])
    for r in (1, 2):
        assert signs(new, *signed[r]) and not signs(old, *signed[r])


def test_the_rotation_is_in_the_ledger_with_both_fingerprints_and_verifies(
    federation_run: dict[str, Any],
) -> None:
    bundle = federation_run["bundle"]
    changes = [e for e in entries(bundle) if e.event.kind == "roster_changed"]
    assert len(changes) == 1
    body = changes[0].event.body
    assert (body["version"], list(body["added"]), list(body["removed"])) == (2, [], [])
    assert [dict(r) for r in body["rotated"]] == [
        {
            "id": ROTATING,
            "old_key": hashlib.sha256(federation_run["old_key"]).hexdigest(),
            "new_key": hashlib.sha256(federation_run["new_key"]).hexdigest(),
        }
    ]
    assert body["first_round"] == 1 and len(body["signers"]) == 2
    report, warnings = verify(federation_run, bundle)
    assert report.anchors.fully_pinned and not warnings
    shown = build_report(report)["roster_changes"]
    assert [(c["version"], c["rotated"][0]["id"], c["first_round"]) for c in shown] == [
        (2, ROTATING, 1)
    ]


def test_a_rotation_entry_with_a_flipped_governor_signature_fails_verification(
    federation_run: dict[str, Any], tmp_path: Path
) -> None:
    def flip(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind != "roster_changed":
            return body
        version = json.loads(body["roster_version"])
        first = sorted(version["signatures"])[0]
        signature = bytearray(bytes.fromhex(version["signatures"][first]))
        signature[-1] ^= 0x80
        version["signatures"][first] = signature.hex()
        return body | {"roster_version": json.dumps(version)}

    flipped = rewritten(federation_run, tmp_path / "flipped", flip)
    with pytest.raises(VerificationError) as exc:
        verify(federation_run, flipped)
    assert "roster change refused" in str(exc.value)
    assert "1 valid governor signature(s) of the 2 required" in str(exc.value)
    # positive control: the same ledger verifies with the governance check skipped (the roster is still followed,
    # so St Anne's later attestations are checked under her new key)
    roster = Roster.loads((flipped / "roster.json").read_text())
    verify_bundle(
        flipped,
        silo_keys=dict(roster.members) | {ROTATING: federation_run["old_key"]},
        audit_public_key=federation_run["audit_key"].public_key().public_bytes_raw(),
        insecure_skip_roster_governance=True,
    )
