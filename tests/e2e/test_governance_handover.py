"""A governance handover while the federation runs over real mTLS gRPC: the new governor set governs from then on.

The parties enrol as in ``test_enrolment`` (governors gov-1..3, K = 2). A fourth governor makes her key. The CA
operator proposes version 2, which hands the federation over to gov-3 and gov-4 (K = 2); gov-1 and gov-2 (two of
the governors in force) sign it. It is installed in the coordinator's directory while round 0 runs and adopted at
round 1's open (the roster is unchanged, so the silos need not fetch it yet). Version 3 rotates St Anne's roster
key and is signed by the new set only; it is installed while round 1 runs and adopted at round 2, where the
running silos fetch versions 2 and 3, check version 2 against the governance they pinned and version 3 against
the one version 2 hands over to, and pin both the roster and the new governance. The exported ledger verifies
along the chain; the same ledger with version 3 signed by the outgoing governors instead fails verification, and
passes only with the governance check skipped (the positive control).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from audits import VerificationError, verify_bundle
from audits.report import build_report
from coordinator.common import RoundStatus
from coordinator.config import ServeConfig, SiloConfig
from coordinator.errors import ConfigError
from coordinator.pki import PASSPHRASE_ENV, load_ed25519_private
from coordinator.pki.enrol import install
from coordinator.pki.governance import RosterVersion
from coordinator.rounds.audit import export_bundle
from coordinator.rounds.roster import governed_roster
from coordinator.sdk.masking import RoundContext, Silo
from coordinator.server.app import start_coordinator
from secagg import Roster
from tests.e2e.harness import exact, in_threads, integer_update
from tests.e2e.test_enrolment import FEDERATION, LENGTH, Party, enrol, secagg
from tests.e2e.test_roster_governance import (
    RETRY,
    entries,
    rewritten,
    serve_config,
    silo_config,
    verify,
)

pytestmark = pytest.mark.e2e


def pub(party: Party) -> str:
    return (party.directory / "governor.pub").read_text(encoding="ascii").strip()


@pytest.fixture(scope="module")
def federation_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("handover")
    (root / "enrolment").mkdir()
    enrolment = enrol(root / "enrolment")
    ca, mailbox = enrolment.ca, enrolment.mailbox
    gov1, gov2, gov3 = enrolment.governors
    gov4 = Party("gov-4", root / "enrolment" / "gov-4", root / "gov-4-passphrase")
    gov4.passphrase_file.write_text("passphrase of gov-4\n", encoding="utf-8")
    gov4.passphrase_file.chmod(0o600)
    secagg(gov4, "pki", "governor", "init", str(gov4.directory))
    v2, v3 = mailbox / "roster-v2.json", mailbox / "roster-v3.json"
    new_set = ["--governor", str(gov3.directory / "governor.pub")]
    new_set += ["--governor", str(gov4.directory / "governor.pub")]
    shown = secagg(
        ca,
        "pki",
        "roster",
        "propose",
        str(ca.directory),
        *new_set,
        "--quorum",
        "1",  # another K than the 2 of 3 before, so the report's quorum in force is seen to change
        "--out",
        str(v2),
    )
    assert "hands over to 1 of 2 new governors" in shown
    for g in (gov1, gov2):  # two of the governors in force approve the handover
        secagg(g, "pki", "roster", "sign", str(g.directory), str(v2), "--yes")
    secagg(
        ca,
        "pki",
        "publish",
        str(ca.directory),
        "--roster",
        str(v2),
        "--out",
        str(mailbox / "f2.json"),
    )
    # version 3 rotates St Anne's roster key (the roster changes, so the running silos fetch the chain); only the
    # new set signs it
    anne = enrolment.silos[0]
    secagg(
        anne,
        "pki",
        "request",
        str(anne.directory),
        "--id",
        anne.name,
        "--role",
        "silo",
        "--federation",
        FEDERATION,
        "--rotate",
    )
    secagg(
        ca,
        "pki",
        "sign",
        str(ca.directory),
        str(anne.directory / "rotation.json"),
        "--out",
        str(mailbox / "anne.rotated.json"),
        "--yes",
    )
    secagg(
        ca, "pki", "roster", "propose", str(ca.directory), "--rotate", anne.name, "--out", str(v3)
    )
    for g in (gov3, gov4):
        secagg(g, "pki", "roster", "sign", str(g.directory), str(v3), "--yes")
    outgoing = []
    for g in (gov1, gov2):  # the outgoing governors' signatures on version 3, for the forged ledger
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(PASSPHRASE_ENV, str(g.passphrase_file))
            outgoing.append(load_ed25519_private(g.directory / "governor.key"))
    honest = RosterVersion.load(v3)
    by_outgoing = RosterVersion(
        honest.version, honest.previous, honest.roster, governance=honest.governance
    )
    for key in outgoing:
        by_outgoing = by_outgoing.signed_by(key)
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

            def run_silo(index: int) -> list[tuple[int, RoundStatus]]:
                def train(ctx: RoundContext) -> npt.NDArray[np.float64]:
                    if index == 0 and ctx.round in (0, 1):
                        # the coordinator's operator installs the next version mid-round
                        install(enrolment.coordinator.directory, (v2, v3)[ctx.round])
                    return exact(integer_update(10 * ctx.round + index, LENGTH))

                with clients[index] as client:
                    return [(r.round, r.status) for r in client.run(train)]

            statuses = in_threads(*[lambda i=i: run_silo(i) for i in range(3)], timeout=150)
            coordinator.service.wait_finished(10)
        finally:
            coordinator.stop()
        mp.setenv(PASSPHRASE_ENV, str(enrolment.coordinator.passphrase_file))
        bundle = root / "bundle"
        export_bundle(serve, bundle)
        audit_key = load_ed25519_private(serve.audit_key)
    return {
        "enrolment": enrolment,
        "statuses": statuses,
        "bundle": bundle,
        "audit_key": audit_key,
        "serve": serve,
        "keys": {g.name: pub(g) for g in (gov1, gov2, gov3, gov4)},
        "by_outgoing": by_outgoing,
        # what an auditor pins: the governance the federation was created with, confirmed with its governors
        # (the CA's governance.json now holds the one version 2 handed over to)
        "governance": (tuple(bytes.fromhex(pub(g)) for g in (gov1, gov2, gov3)), 2),
    }


def test_the_running_federation_follows_the_handover_and_the_new_set_governs(
    federation_run: dict[str, Any],
) -> None:
    done = RoundStatus.COMPLETED
    assert federation_run["statuses"] == [[(0, done), (1, done), (2, done)]] * 3
    keys = federation_run["keys"]
    for silo in federation_run["enrolment"].silos:
        assert RosterVersion.load(silo.directory / "roster-version.json").version == 3
        pinned = json.loads((silo.directory / "governance.json").read_text())
        assert pinned == {"governors": [keys["gov-3"], keys["gov-4"]], "quorum": 1}
    changes = [
        e.event.body for e in entries(federation_run["bundle"]) if e.event.kind == "roster_changed"
    ]
    assert [(c["version"], c["first_round"]) for c in changes] == [(2, 1), (3, 2)]
    assert sorted(changes[0]["signers"]) == sorted([keys["gov-1"], keys["gov-2"]])
    assert sorted(changes[1]["signers"]) == sorted([keys["gov-3"], keys["gov-4"]])
    handover = changes[0]["governance"]
    assert (list(handover["governors"]), handover["quorum"]) == ([keys["gov-3"], keys["gov-4"]], 1)
    assert "governance" not in changes[1] and changes[1]["rotated"][0]["id"] == "st-anne"
    report, warnings = verify(federation_run, federation_run["bundle"])
    assert report.anchors.fully_pinned and not warnings
    # the report gives each change the K it needed: 2 of the creation's three, then the new set's 1
    shown = build_report(report)["roster_changes"]
    assert [(c["version"], c["quorum"]) for c in shown] == [(2, 2), (3, 1)]


def test_a_ledger_where_the_outgoing_governors_signed_the_next_version_fails_verification(
    federation_run: dict[str, Any], tmp_path: Path
) -> None:
    forged_version = federation_run["by_outgoing"]

    def outgoing(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind != "roster_changed" or body["version"] != 3:
            return body
        return body | {"roster_version": forged_version.dumps()}

    forged = rewritten(federation_run, tmp_path / "outgoing", outgoing)
    with pytest.raises(VerificationError) as exc:
        verify(federation_run, forged)
    assert "roster change refused" in str(exc.value)
    assert "roster version 3 has 0 valid governor signature(s) of the 1 required" in str(exc.value)
    # positive control: the same ledger verifies with the governance check skipped
    roster = Roster.loads((forged / "roster.json").read_text())
    verify_bundle(
        forged,
        silo_keys=dict(roster.members),
        audit_public_key=federation_run["audit_key"].public_key().public_bytes_raw(),
        insecure_skip_roster_governance=True,
    )


def test_a_restarted_coordinator_rebuilds_the_handover_from_the_ledger(
    federation_run: dict[str, Any], tmp_path: Path
) -> None:
    roster = governed_roster(
        federation_run["serve"]
    )  # its directory pins version 3 and the new governance
    assert roster is not None
    assert roster.resume(entries(federation_run["bundle"])).version == 3
    keys = federation_run["keys"]
    assert [g.hex() for g in roster.governors] == [keys["gov-3"], keys["gov-4"]]
    assert roster.created_facts()["governors"] == [keys["gov-1"], keys["gov-2"], keys["gov-3"]]
    # the same ledger with version 3 signed by the outgoing governors: the restart is refused
    forged_version = federation_run["by_outgoing"]

    def outgoing(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind != "roster_changed" or body["version"] != 3:
            return body
        return body | {"roster_version": forged_version.dumps()}

    forged = rewritten(federation_run, tmp_path / "outgoing", outgoing)
    with pytest.raises(ConfigError, match="0 valid governor signature"):
        governed_roster(federation_run["serve"]).resume(entries(forged))  # type: ignore[union-attr]
