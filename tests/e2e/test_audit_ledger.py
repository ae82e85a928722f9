"""The audit ledger end to end (issue 5): real bundles from real runs, the tamper suite, the Audit service, witnesses.

The module's bundle comes from a federation run exactly as an operator runs it: TOML files written by
:func:`coordinator.config.write_demo_configs` (with a ``[privacy]`` table), the coordinator started by
:func:`coordinator.server.app.start_coordinator`, three silos built by ``Silo.from_config`` (so each one witnesses
the coordinator's checkpoints), and ``secagg audit export|verify|report`` invoked through the real CLI. Every
tamper case edits a copy of that bundle the way an attacker with write access to the files would, and the
verifier must name the problem.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from audits import (
    CheckpointSigner,
    CheckpointWitness,
    EventKind,
    Ledger,
    LedgerEntry,
    MerkleTree,
    VerificationError,
    build_report,
    canonical_json,
    leaf_hash,
    merkle_root,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
    write_bundle,
)
from audits.witness import WitnessStatement, sign_statement
from coordinator.cli import app
from coordinator.common import RoundStatus, ledger_origin
from coordinator.config import PrivacyConfig, ServeConfig, SiloConfig, write_demo_configs
from coordinator.errors import AuditFailure
from coordinator.pki import load_ed25519_private
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.rounds.audit import AuditTrail, verify_bundle_dir
from coordinator.rounds.masking import MaskingRounds
from coordinator.sdk.masking import PrivateUpdate, RoundContext, RoundReport, Silo
from coordinator.sdk.transport import Transport
from coordinator.server.app import start_coordinator
from coordinator.store import SQLiteStore
from dp.accounting import (
    DP_SGD_MECHANISM,
    MechanismStep,
    PrivacyAttestation,
    RdpAccountant,
    library_versions,
    recompute_epsilon,
)
from secagg import Roster
from tests.e2e.harness import (
    EXACT_BITS,
    EXACT_CLIP,
    SHORT,
    Consortium,
    ManualSilo,
    audit_trail,
    deadlines_with,
    exact,
    in_threads,
    integer_update,
    running_coordinator,
    settings,
    wait_until,
)

pytestmark = pytest.mark.e2e

LENGTH = 1000
ROUNDS = 2
STEP = MechanismStep(noise_multiplier=1.1, sample_rate=0.05, steps=20)
CEILING = PrivacyConfig(epsilon=10.0, delta=1e-5)
# Each silo holds its own delta (all within the ceiling's), so a report that mixes silos up shows it.
DELTAS = {"a": 1e-5, "b": 1e-6, "c": 1e-7}

runner = CliRunner()


def units(silo: str, round_: int) -> npt.NDArray[np.int64]:
    return integer_update(100 * round_ + ord(silo), LENGTH)


@dataclass(frozen=True)
class DpUpdate:
    """A silo's private round without torch (satisfies ``coordinator.sdk.masking.PrivateUpdate``).

    The epsilon it attests is the real RDP accountant's over the silo's whole history, this round last.
    """

    update: npt.NDArray[np.float64] = field(repr=False)
    history: tuple[MechanismStep, ...]
    delta: float

    def attestation(
        self, *, federation: str, round: int, session_id: str, silo: str
    ) -> PrivacyAttestation:
        accountant = RdpAccountant(history=self.history)
        step = self.history[-1]
        return PrivacyAttestation(
            federation=federation,
            round=round,
            session_id=session_id,
            silo=silo,
            mechanism=DP_SGD_MECHANISM,
            noise_multiplier=step.noise_multiplier,
            sample_rate=step.sample_rate,
            steps=step.steps,
            max_grad_norm=1.0,
            accountant=accountant.describe()["accountant"],
            epsilon=accountant.epsilon(self.delta),
            delta=self.delta,
            library_versions=library_versions(),
        )


def private_train(silo: str) -> Callable[[RoundContext], PrivateUpdate]:
    def train(ctx: RoundContext) -> PrivateUpdate:
        return DpUpdate(exact(units(silo, ctx.round)), (STEP,) * (ctx.round + 1), DELTAS[silo])

    return train


def plain_rounds(consortium: Consortium, address: str, *, rounds: int) -> None:
    """Every silo of ``consortium`` takes part in ``rounds`` rounds on the SDK, without DP."""

    def silo(name: str) -> list[RoundReport]:
        with consortium.sdk(name, address) as client:
            return list(client.run(lambda ctx: exact(units(name, ctx.round)), max_rounds=rounds))

    reports = in_threads(*[lambda s=s: silo(s) for s in consortium.silos])
    assert all(r.status is RoundStatus.COMPLETED for rs in reports for r in rs), reports


def cli(*args: str | Path) -> tuple[int, str]:
    """Run ``secagg`` in-process; returns the exit code and everything it printed."""
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


# -- the module's real run -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditRun:
    """Files of one real two-round federation run."""

    consortium: Consortium
    serve: Path
    early: Path  # bundle exported between round 0 and round 1, while the coordinator ran
    bundle: Path  # bundle exported after the run
    witnessed: Path  # the latest checkpoint silo a's witness accepted (a signed note)
    witness_file: Path  # silo a's witness and local ledger
    reports: list[list[RoundReport]]

    @property
    def keys(self) -> list[str]:
        """The CLI options that pin the coordinator's audit key, the consortium key and the log origin."""
        p = self.consortium.paths
        return [
            "--audit-key",
            str(p.audit_public_key),
            "--consortium-key",
            str(p.consortium_public_key),
            "--origin",
            ledger_origin(self.consortium.federation),
        ]


@pytest.fixture(scope="module")
def run(trio: Consortium, tmp_path_factory: pytest.TempPathFactory) -> AuditRun:
    out = tmp_path_factory.mktemp("audit-run")
    # The coordinator binds port 0; the silos' files name a placeholder address and each silo is pointed at
    # the bound port through from_config's override (no window between picking a free port and binding it).
    serve, silo_files = write_demo_configs(
        trio.paths,
        out / "config",
        rounds=ROUNDS,
        clip=EXACT_CLIP,
        bits=EXACT_BITS,
        model_size=LENGTH,
        listen="127.0.0.1:0",
        coordinator="127.0.0.1:1",
        privacy=CEILING,
    )
    silo_configs = [SiloConfig.load(path) for path in silo_files]
    assert all(c.audit_public_key is not None for c in silo_configs)  # witnesses are on
    coordinator = start_coordinator(ServeConfig.load(serve))
    address = f"127.0.0.1:{coordinator.port}"

    def one_round(config: SiloConfig) -> list[RoundReport]:
        with Silo.from_config(config, address=address) as silo:
            return list(silo.run(private_train(config.silo), max_rounds=1))

    try:
        first = in_threads(*[lambda c=c: one_round(c) for c in silo_configs])
        code, output = cli("audit", "export", "--config", serve, "--out", out / "early")
        assert code == 0, output
        second = in_threads(*[lambda c=c: one_round(c) for c in silo_configs])
        assert coordinator.service.wait_finished(30.0)
    finally:
        coordinator.stop()
    code, output = cli("audit", "export", "--config", serve, "--out", out / "bundle")
    assert code == 0, output
    a = silo_configs[0]
    assert a.audit_public_key is not None
    with CheckpointWitness(
        a.state_dir / "witness.sqlite",
        audit_public_key=a.audit_public_key,
        origin=ledger_origin(trio.federation),
    ) as witness:
        latest = witness.latest()
    assert latest is not None
    witnessed = out / "witnessed-checkpoint.txt"
    witnessed.write_text(latest.text, encoding="utf-8")
    return AuditRun(
        trio,
        serve,
        out / "early",
        out / "bundle",
        witnessed,
        a.state_dir / "witness.sqlite",
        [f + s for f, s in zip(first, second, strict=True)],
    )


def bundle_lines(bundle: Path) -> list[bytes]:
    return (bundle / "entries.jsonl").read_bytes().splitlines()


def write_lines(bundle: Path, lines: list[bytes]) -> None:
    (bundle / "entries.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))


def decoded(bundle: Path) -> list[LedgerEntry]:
    return [LedgerEntry.decode(line) for line in bundle_lines(bundle)]


def first_index(bundle: Path, kind: EventKind) -> int:
    return next(e.index for e in decoded(bundle) if e.event.kind is kind)


# -- 1. a real bundle verifies, and reports ------------------------------------------------------------------
def test_real_run_bundle_verifies_and_reports(run: AuditRun, tmp_path: Path) -> None:
    for silo_reports in run.reports:
        assert [r.status for r in silo_reports] == [RoundStatus.COMPLETED] * ROUNDS
    entries = decoded(run.bundle)
    kinds = [e.event.kind for e in entries]
    assert kinds[0] is EventKind.FEDERATION_CREATED
    assert entries[0].event.body["privacy"]["budget"] == {
        "epsilon": CEILING.epsilon,
        "delta": CEILING.delta,
    }
    assert kinds.count(EventKind.PRIVACY_ATTESTATION) == 3 * ROUNDS
    assert kinds.count(EventKind.ROUND_CLOSED) == ROUNDS

    code, output = cli("audit", "verify", run.bundle, *run.keys)
    assert code == 0, output
    assert f"OK: {len(entries)} entries of federation 'fed'" in output
    assert f"{3 * ROUNDS} attestation signatures verified" in output
    assert f"{3 * ROUNDS} epsilons recomputed" in output
    assert (
        "every completed round complete; pinned: audit key, consortium key and log origin" in output
    )
    assert "WARNING" not in output
    # every contributor's attestation is bound to the session its round's participants record names
    for participants in (e for e in entries if e.event.kind is EventKind.PARTICIPANTS):
        bound = {
            e.event.body["silo"]: e.event.body["attestation"]["session_id"]
            for e in entries
            if e.event.kind is EventKind.PRIVACY_ATTESTATION
            and e.event.round == participants.event.round
        }
        assert set(bound) == set(participants.event.body["survivors"])
        assert set(bound.values()) == {participants.event.body["session_id"]}
    # the final bundle extends what the silo witnessed and what was exported mid-run
    early_checkpoint = tmp_path / "early.txt"
    shutil.copy(run.early / "checkpoint.txt", early_checkpoint)
    code, output = cli(
        "audit",
        "verify",
        run.bundle,
        *run.keys,
        "--checkpoint",
        run.witnessed,
        "--checkpoint",
        early_checkpoint,
    )
    assert code == 0, output
    assert "2 later checkpoints consistent" in output
    # the mid-run bundle is a valid prefix on its own
    code, output = cli("audit", "verify", run.early, *run.keys)
    assert code == 0, output

    out = tmp_path / "report"
    code, output = cli("audit", "report", run.bundle, "--out", out, *run.keys, "--no-pdf")
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    html = (out / "report.html").read_text()
    assert report["report_schema"] == 3 and report["federation"] == "fed"
    assert report["verification"]["status"] == "verified"
    assert not (out / "report.pdf").exists()  # --no-pdf
    assert report["checkpoint"]["size"] == len(entries)
    rows = {row["id"]: row for row in report["silos"]}
    assert sorted(rows) == ["a", "b", "c"]
    for silo, row in rows.items():
        assert row["rounds"] == list(range(ROUNDS))
        assert row["epsilon_spent"] == pytest.approx(
            recompute_epsilon([STEP] * ROUNDS, DELTAS[silo]), rel=1e-12
        )
        assert row["budget"] == {"epsilon": CEILING.epsilon, "delta": CEILING.delta}
        assert [p["round"] for p in row["epsilon_by_round"]] == list(range(ROUNDS))
        assert silo in html
    assert "<svg" in html and "http://" not in _without_xml_namespaces(html)


def test_silo_local_ledger_proves_its_attestations_are_in_the_bundle(run: AuditRun) -> None:
    """Silo a's own record of what it sent matches the logged attestations, each provably in the log it
    accepted (RFC 9162 inclusion proof against the witnessed checkpoint)."""
    entries = bundle_lines(run.bundle)
    tree = MerkleTree(leaf_hash(e) for e in entries)
    logged = {
        e.event.round: e
        for e in decoded(run.bundle)
        if e.event.kind is EventKind.PRIVACY_ATTESTATION and e.event.body["silo"] == "a"
    }
    assert set(logged) == set(range(ROUNDS))
    pinned = bytes.fromhex(run.consortium.paths.audit_public_key.read_text().strip())
    with CheckpointWitness(
        run.witness_file, audit_public_key=pinned, origin=ledger_origin("fed")
    ) as witness:
        sent = witness.records("sent")
        latest = witness.latest()
        assert latest is not None and latest.size <= len(entries)
        assert [r.body["round"] for r in sent] == list(range(ROUNDS))
        for record in sent:
            entry = logged[record.body["round"]]
            assert dict(record.body["attestation"]) == dict(entry.event.body["attestation"])
            assert record.body["attestation_signature"] == entry.event.body["signature"]
            data = entries[entry.index]
            witness.check_inclusion(
                data, entry.index, tree.inclusion_proof(entry.index, latest.size)
            )
        # an entry the coordinator did not log at that index fails the proof
        other = logged[0].index
        with pytest.raises(VerificationError):
            witness.check_inclusion(
                entries[other + 1], other, tree.inclusion_proof(other, latest.size)
            )


def test_report_gives_each_silo_its_own_delta(run: AuditRun, tmp_path: Path) -> None:
    out = tmp_path / "report"
    code, output = cli("audit", "report", run.bundle, "--out", out, *run.keys, "--no-pdf")
    assert code == 0, output
    rows = {row["id"]: row for row in json.loads((out / "report.json").read_text())["silos"]}
    assert {silo: row["delta"] for silo, row in rows.items()} == DELTAS


# -- 2. the tamper suite -------------------------------------------------------------------------------------
def _edit_entry(bundle: Path, index: int, edit: Callable[[dict[str, object]], None]) -> None:
    """Re-encode entry ``index`` canonically after ``edit`` changed its JSON (a careful attacker's edit)."""
    lines = bundle_lines(bundle)
    obj = json.loads(lines[index])
    assert canonical_json(obj) == lines[index]  # the re-encoding itself changes nothing
    edit(obj)
    lines[index] = canonical_json(obj)
    write_lines(bundle, lines)


def _attestation_body(obj: dict[str, object]) -> dict[str, object]:
    body = obj["body"]
    assert isinstance(body, dict)
    return body


def flip_hash_byte(bundle: Path) -> str:
    """A single hex digit of a logged global-model hash changes: still valid JSON, still canonical."""
    k = first_index(bundle, EventKind.GLOBAL_MODEL)
    lines = bundle_lines(bundle)
    at = lines[k].index(b'"model_hash":"') + len(b'"model_hash":"')
    line = bytearray(lines[k])
    line[at] = ord("0") if line[at] != ord("0") else ord("1")
    lines[k] = bytes(line)
    write_lines(bundle, lines)
    return f"entry {k}: does not match the hash that entry {k + 1} recorded"


def flip_structural_byte(bundle: Path) -> str:
    k = 3
    lines = bundle_lines(bundle)
    lines[k] = b"[" + lines[k][1:]
    write_lines(bundle, lines)
    return f"entry {k}: malformed or edited"


def delete_entry(bundle: Path) -> str:
    k = first_index(bundle, EventKind.PRIVACY_ATTESTATION)
    lines = bundle_lines(bundle)
    del lines[k]
    write_lines(bundle, lines)
    return f"entry {k}: claims index {k + 1}: an entry was deleted, inserted or reordered"


def insert_duplicate(bundle: Path) -> str:
    k = first_index(bundle, EventKind.PRIVACY_ATTESTATION)
    lines = bundle_lines(bundle)
    lines.insert(k + 1, lines[k])
    write_lines(bundle, lines)
    return f"entry {k + 1}: claims index {k}: an entry was deleted, inserted or reordered"


def reorder_entries(bundle: Path) -> str:
    k = first_index(bundle, EventKind.PRIVACY_ATTESTATION)
    lines = bundle_lines(bundle)
    lines[k], lines[k + 1] = lines[k + 1], lines[k]
    write_lines(bundle, lines)
    return f"entry {k}: claims index {k + 1}"


def cut_tail(bundle: Path) -> str:
    lines = bundle_lines(bundle)
    write_lines(bundle, lines[:-3])
    return f"truncated: bundle has {len(lines) - 3} entries, its checkpoint commits to {len(lines)}"


def halve_claimed_epsilon(bundle: Path) -> str:
    k = first_index(bundle, EventKind.PRIVACY_ATTESTATION)

    def edit(obj: dict[str, object]) -> None:
        attestation = _attestation_body(obj)["attestation"]
        assert isinstance(attestation, dict)
        attestation["epsilon"] = attestation["epsilon"] / 2

    _edit_entry(bundle, k, edit)
    return f"entry {k}: attestation of silo"


def halve_epsilon_and_its_signed_payload(bundle: Path) -> str:
    """The attacker also rewrites the signed bytes to match: the silo's signature no longer verifies."""
    k = first_index(bundle, EventKind.PRIVACY_ATTESTATION)

    def edit(obj: dict[str, object]) -> None:
        body = _attestation_body(obj)
        attestation = body["attestation"]
        assert isinstance(attestation, dict)
        attestation["epsilon"] = attestation["epsilon"] / 2
        payload = PrivacyAttestation.from_dict(attestation).signing_payload()
        body["signing_payload"] = payload.hex()

    _edit_entry(bundle, k, edit)
    return f"entry {k}: attestation signature of silo"


def alter_recomputed_epsilon(bundle: Path) -> str:
    """The coordinator's own recomputation is edited (e.g. to hide a mismatch)."""
    k = first_index(bundle, EventKind.PRIVACY_ATTESTATION)

    def edit(obj: dict[str, object]) -> None:
        body = _attestation_body(obj)
        body["recomputed_epsilon"] = float(body["recomputed_epsilon"]) * 1.5  # type: ignore[arg-type]

    _edit_entry(bundle, k, edit)
    return f"entry {k}: epsilon of silo"


def foreign_signed_checkpoint(bundle: Path) -> str:
    """Same origin, size and root, but signed by a key that is not the coordinator's."""
    text = (bundle / "checkpoint.txt").read_text()
    note = verify_checkpoint(
        text, bytes.fromhex((bundle / "audit_key.pub").read_text()), ledger_origin("fed")
    )
    forger = CheckpointSigner.generate(key_name=note.origin)
    forged = forger.sign(origin=note.origin, size=note.size, root=note.root)
    (bundle / "checkpoint.txt").write_text(forged.text)
    return "checkpoint: not signed by the pinned audit key"


def foreign_checkpoint_and_key(bundle: Path) -> str:
    """The attacker re-signs with its own key and ships that key in the bundle."""
    text = (bundle / "checkpoint.txt").read_text()
    note = verify_checkpoint(
        text, bytes.fromhex((bundle / "audit_key.pub").read_text()), ledger_origin("fed")
    )
    forger = CheckpointSigner.generate(key_name=note.origin)
    (bundle / "checkpoint.txt").write_text(
        forger.sign(origin=note.origin, size=note.size, root=note.root).text
    )
    (bundle / "audit_key.pub").write_text(forger.public_key.hex() + "\n")
    return "bundle: its audit key is not the pinned audit public key"


def flip_checkpoint_signature(bundle: Path) -> str:
    text = (bundle / "checkpoint.txt").read_text()
    head, _, blob = text.rstrip("\n").rpartition(" ")
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 0x01  # inside the Ed25519 signature (the first 4 bytes are the key id)
    (bundle / "checkpoint.txt").write_text(f"{head} {base64.b64encode(bytes(raw)).decode()}\n")
    return "checkpoint: signature by audit key"


TAMPERING: dict[str, Callable[[Path], str]] = {
    "flip_hash_byte": flip_hash_byte,
    "flip_structural_byte": flip_structural_byte,
    "delete_entry": delete_entry,
    "insert_duplicate": insert_duplicate,
    "reorder_entries": reorder_entries,
    "cut_tail": cut_tail,
    "halve_claimed_epsilon": halve_claimed_epsilon,
    "halve_epsilon_and_its_signed_payload": halve_epsilon_and_its_signed_payload,
    "alter_recomputed_epsilon": alter_recomputed_epsilon,
    "foreign_signed_checkpoint": foreign_signed_checkpoint,
    "foreign_checkpoint_and_key": foreign_checkpoint_and_key,
    "flip_checkpoint_signature": flip_checkpoint_signature,
}


@pytest.mark.parametrize("tamper", list(TAMPERING))
def test_tampered_bundle_fails_naming_the_problem(
    run: AuditRun, tmp_path: Path, tamper: str
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(run.bundle, copy)
    expected = TAMPERING[tamper](copy)
    assert bundle_lines(copy) != bundle_lines(run.bundle) or (
        (copy / "checkpoint.txt").read_bytes() != (run.bundle / "checkpoint.txt").read_bytes()
    )
    code, output = cli("audit", "verify", copy, *run.keys)
    assert code != 0
    assert "FAILED" in output and expected in output, output
    # the untouched original still verifies
    code, output = cli("audit", "verify", run.bundle, *run.keys)
    assert code == 0, output


def test_truncated_log_is_caught_against_a_later_checkpoint(run: AuditRun, tmp_path: Path) -> None:
    """A log cut back to an earlier checkpoint the coordinator really signed is self-consistent: only a
    later checkpoint (the one a silo's witness kept) exposes it."""
    early_size = len(bundle_lines(run.early))
    final_size = len(bundle_lines(run.bundle))
    assert early_size < final_size
    cut = tmp_path / "cut"
    shutil.copytree(run.bundle, cut)
    write_lines(cut, bundle_lines(run.bundle)[:early_size])
    shutil.copy(run.early / "checkpoint.txt", cut / "checkpoint.txt")
    code, output = cli("audit", "verify", cut, *run.keys)
    assert code == 0, output  # alone, indistinguishable from an honest older export
    for bundle in (cut, run.early):
        code, output = cli("audit", "verify", bundle, *run.keys, "--checkpoint", run.witnessed)
        assert code != 0
        assert (
            f"truncated: bundle has {early_size} entries, but a checkpoint signed by the audit key "
            f"commits to {final_size}"
        ) in output, output


def test_roster_of_another_consortium_is_refused(
    run: AuditRun, consortium: Consortium, tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(run.bundle, copy)
    shutil.copy(
        consortium.paths.roster, copy / "roster.json"
    )  # same federation id, other consortium
    code, output = cli("audit", "verify", copy, *run.keys)
    assert code != 0
    assert "roster is signed by a different consortium key" in output, output


# -- 2b. fail closed: pins, roster, completeness ------------------------------------------------------------
def test_verify_without_pins_fails_closed(run: AuditRun, tmp_path: Path) -> None:
    """The review's finding: without pins the verifier trusted the bundle's own keys and exited 0."""
    forged = tmp_path / "forged"
    shutil.copytree(run.bundle, forged)
    foreign_checkpoint_and_key(forged)  # re-signed by an attacker, who ships its own key
    pins = dict(zip(run.keys[::2], run.keys[1::2], strict=True))
    for missing in (["--audit-key"], ["--consortium-key"], ["--origin"], list(pins)):
        given = [
            x for option, value in pins.items() if option not in missing for x in (option, value)
        ]
        for bundle in (run.bundle, forged):
            code, output = cli("audit", "verify", bundle, *given)
            assert code == 2, output
            assert "not pinned:" in output and "--unpinned" in output, output
            for option in missing:
                assert option in output
    out = tmp_path / "report"
    code, output = cli("audit", "report", run.bundle, "--out", out, "--no-pdf")
    assert code == 2 and not out.exists(), output


def test_unpinned_checks_consistency_and_exits_3(run: AuditRun, tmp_path: Path) -> None:
    forged = tmp_path / "forged"
    shutil.copytree(run.bundle, forged)
    foreign_checkpoint_and_key(forged)
    for bundle in (run.bundle, forged):  # an attacker's re-signed bundle is consistent too
        code, output = cli("audit", "verify", bundle, "--unpinned")
        assert code == 3, output
        assert "CONSISTENT:" in output and "NOT PINNED: audit key, consortium key, origin" in output
        assert "OK:" not in output
    # a tampered entry still fails, pinned or not
    tampered = tmp_path / "tampered"
    shutil.copytree(run.bundle, tampered)
    expected = flip_hash_byte(tampered)
    code, output = cli("audit", "verify", tampered, "--unpinned")
    assert code == 1 and expected in output, output
    # the report is written, says in words that nothing was pinned, and is never green
    out = tmp_path / "report"
    code, output = cli("audit", "report", forged, "--out", out, "--unpinned", "--no-pdf")
    assert code == 3, output
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["status"] == "unpinned"
    assert report["verification"]["statement"].startswith("Nothing was pinned")
    html = (out / "report.html").read_text()
    assert 'class="banner banner-unpinned"' in html and "Verified against" not in html
    # partially pinned: still exit 3, and the report names what was not pinned
    code, output = cli("audit", "verify", run.bundle, *run.keys[:4], "--unpinned")  # no origin
    assert code == 3 and "NOT PINNED: origin" in output, output


def test_a_pinned_federation_or_origin_must_match(run: AuditRun) -> None:
    pins = run.keys[:4]
    code, output = cli("audit", "verify", run.bundle, *pins, "--federation", "fed")
    assert code == 0, output
    code, output = cli("audit", "verify", run.bundle, *pins, "--federation", "other")
    assert code == 1 and "checkpoint: " in output, output
    code, output = cli("audit", "verify", run.bundle, *pins, "--origin", "secagg/federation/other")
    assert code == 1 and "checkpoint: " in output, output
    code, output = cli(
        "audit", "verify", run.bundle, *pins, "--origin", ledger_origin("fed"), "--federation", "x"
    )
    assert code == 1 and "the pinned federation is 'x'" in output, output


def test_a_roster_swapped_for_another_the_consortium_signed_is_refused(
    run: AuditRun, tmp_path: Path
) -> None:
    """Same consortium key, same federation id, another member key: the signature verifies, the
    fingerprint ``federation_created`` recorded does not."""
    trio = run.consortium
    members = dict(trio.roster.members)
    members["c"] = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    swapped = Roster.create(
        federation=trio.federation,
        members=members,
        consortium_key=load_ed25519_private(trio.paths.consortium_key),
    )
    swapped.verify(trio.consortium_key)
    copy = tmp_path / "bundle"
    shutil.copytree(run.bundle, copy)
    (copy / "roster.json").write_text(swapped.dumps())
    for extra in ([], ["--unpinned"]):
        code, output = cli("audit", "verify", copy, *run.keys, *extra)
        assert code == 1, output
        assert (
            f"bundle: roster.json (fingerprint {swapped.fingerprint()}) is not the roster the "
            f"federation was created with (federation_created, entry 0, records "
            f"{trio.roster.fingerprint()}): a swapped roster"
        ) in output, output


def _rewritten(run: AuditRun, out: Path, *, drop: Callable[[LedgerEntry], bool]) -> Path:
    """The coordinator (it holds the audit key) rewrites its ledger without the entries ``drop``
    picks, re-chains and re-signs it: a self-consistent log, as signed as the honest one."""
    origin = ledger_origin(run.consortium.federation)
    signer = CheckpointSigner(load_ed25519_private(run.consortium.paths.audit_key), key_name=origin)
    ledger = Ledger(out.with_suffix(".sqlite"), origin=origin)
    try:
        ledger.append_many([e.event for e in decoded(run.bundle) if not drop(e)])
        ledger.checkpoint(signer)
        return write_bundle(
            ledger,
            out,
            roster_bytes=(run.bundle / "roster.json").read_bytes(),
            audit_public_key=signer.public_key,
        )
    finally:
        ledger.close()


def test_a_coordinator_that_leaves_out_one_attestation_is_caught(
    run: AuditRun, tmp_path: Path
) -> None:
    def b_in_round_1(entry: LedgerEntry) -> bool:
        event = entry.event
        return (
            event.kind is EventKind.PRIVACY_ATTESTATION
            and event.round == 1
            and event.body["silo"] == "b"
        )

    honest = _rewritten(run, tmp_path / "honest", drop=lambda e: False)  # positive control
    code, output = cli("audit", "verify", honest, *run.keys)
    assert code == 0, output
    dishonest = _rewritten(run, tmp_path / "dishonest", drop=b_in_round_1)
    participants = next(
        e.index
        for e in decoded(dishonest)
        if e.event.kind is EventKind.PARTICIPANTS and e.event.round == 1
    )
    code, output = cli("audit", "verify", dishonest, *run.keys)
    assert code == 1, output
    assert (
        "FAILED: incomplete: round 1, silo 'b': took part in the completed round (participants, "
        f"entry {participants}) but has no privacy attestation for it"
    ) in output, output


@pytest.mark.slow
def test_report_writes_a_pdf_beside_the_html(
    run: AuditRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audits import find_chromium

    if find_chromium() is None:
        pytest.skip("!!! headless Chromium not found: report.pdf was NOT printed !!!")
    out = tmp_path / "report"
    code, output = cli("audit", "report", run.bundle, "--out", out, *run.keys)
    assert code == 0, output
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert "PDF written:" in output
    # no Chromium: by default a clear message and exit 0; --pdf insists (exit 4)
    monkeypatch.setattr("audits.report.find_chromium", lambda: None)
    monkeypatch.setattr("audits.find_chromium", lambda: None, raising=False)
    code, output = cli("audit", "report", run.bundle, "--out", tmp_path / "r2", *run.keys)
    assert code == 0 and "no PDF: headless Chromium was not found" in output, output
    code, output = cli("audit", "report", run.bundle, "--out", tmp_path / "r3", *run.keys, "--pdf")
    assert code == 4 and "no PDF: headless Chromium was not found" in output, output
    assert (tmp_path / "r3" / "report.html").exists()


# -- 3 and 6. the gRPC Audit service -------------------------------------------------------------------------
@pytest.fixture
def monitored(trio: Consortium, tmp_path: Path) -> Iterator[tuple[ManualSilo, MaskingRounds]]:
    """A coordinator after one completed round, and a roster member's channel to it."""
    with running_coordinator(
        trio, tmp_path / "c.db", settings(n=3, rounds=1, length=LENGTH)
    ) as coord:
        plain_rounds(trio, coord.address, rounds=1)
        assert coord.service.wait_finished(10.0)
        with ManualSilo(trio, "b", coord.address) as silo:
            yield silo, coord.service


def _status(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert isinstance(error, grpc.Call)
    code = error.code()
    assert isinstance(code, grpc.StatusCode)
    return code


def test_audit_service_serves_verifiable_checkpoints_entries_and_proofs(
    monitored: tuple[ManualSilo, MaskingRounds], trio: Consortium
) -> None:
    silo, service = monitored
    audit = pb_grpc.AuditStub(silo.channel)
    pinned = bytes.fromhex(trio.paths.audit_public_key.read_text().strip())
    fed = trio.federation

    checkpoint = audit.GetCheckpoint(pb.CheckpointRequest(federation=fed))
    note = verify_checkpoint(checkpoint.note, pinned, ledger_origin(fed))
    size = note.size
    assert checkpoint.size == size == service.audit.ledger.size
    assert size >= 6  # created, opened, fingerprints, participants, model, closed

    entries = list(audit.GetEntries(pb.EntriesRequest(federation=fed, start=0, end=size)).entries)
    assert entries == service.audit.ledger.entries(0, size)
    assert (
        list(audit.GetEntries(pb.EntriesRequest(federation=fed, start=2, end=4)).entries)
        == (entries[2:4])
    )
    leaves = [leaf_hash(e) for e in entries]
    assert (
        merkle_root(leaves) == note.root
    )  # the served entries are what the signed note commits to

    for index in range(size):
        proof = audit.GetInclusionProof(
            pb.InclusionProofRequest(federation=fed, index=index, size=size)
        )
        verify_inclusion(leaves[index], index, size, list(proof.hashes), note.root)
    for old in range(1, size):
        proof = audit.GetConsistencyProof(
            pb.ConsistencyProofRequest(federation=fed, old_size=old, new_size=size)
        )
        verify_consistency(old, size, list(proof.hashes), merkle_root(leaves[:old]), note.root)

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    bad_calls: list[Callable[[], object]] = [
        lambda: audit.GetEntries(pb.EntriesRequest(federation=fed, start=4, end=2)),
        lambda: audit.GetEntries(pb.EntriesRequest(federation=fed, start=size + 1, end=size + 5)),
        lambda: audit.GetInclusionProof(
            pb.InclusionProofRequest(federation=fed, index=size, size=size)
        ),
        lambda: audit.GetInclusionProof(
            pb.InclusionProofRequest(federation=fed, index=0, size=size + 1)
        ),
        lambda: audit.GetConsistencyProof(
            pb.ConsistencyProofRequest(federation=fed, old_size=size, new_size=1)
        ),
        lambda: audit.GetConsistencyProof(
            pb.ConsistencyProofRequest(federation=fed, old_size=1, new_size=size + 1)
        ),
    ]
    assert [_status(call) for call in bad_calls] == [invalid] * len(bad_calls)
    assert (
        _status(lambda: audit.GetCheckpoint(pb.CheckpointRequest(federation="other")))
        is grpc.StatusCode.NOT_FOUND
    )
    assert service.audit.ledger.size == size  # reading changed nothing


@pytest.mark.parametrize(
    "method", ["GetCheckpoint", "GetEntries", "GetInclusionProof", "GetConsistencyProof"]
)
def test_undecodable_audit_request_is_invalid_argument(
    monitored: tuple[ManualSilo, MaskingRounds], method: str
) -> None:
    silo, service = monitored
    before = service.audit.ledger.size
    raw = silo.channel.unary_unary(
        f"/coordinator.proto.v1.Audit/{method}",
        request_serializer=lambda data: data,
        response_deserializer=lambda data: data,
    )
    assert _status(lambda: raw(b"\x0a\xff\xff\xff\xff")) is grpc.StatusCode.INVALID_ARGUMENT
    assert service.audit.ledger.size == before


# -- 4. a coordinator that rewrites history is caught by a silo ----------------------------------------------
def test_silo_witness_catches_a_coordinator_that_rewrote_history(
    trio: Consortium, tmp_path: Path
) -> None:
    config = settings(n=3, rounds=3, length=LENGTH)
    pinned = bytes.fromhex(trio.paths.audit_public_key.read_text().strip())
    witness_file = tmp_path / "a-witness.sqlite"

    def take_part(address: str) -> list[RoundReport | BaseException]:
        def witnessing_a() -> RoundReport | BaseException:
            with trio.sdk(
                "a", address, audit_public_key=pinned, witness_path=witness_file
            ) as client:
                try:
                    (report,) = client.run(lambda ctx: exact(units("a", ctx.round)), max_rounds=1)
                except AuditFailure as exc:
                    return exc
                return report

        def plain(silo: str) -> RoundReport:
            with trio.sdk(silo, address) as client:
                (report,) = client.run(lambda ctx: exact(units(silo, ctx.round)), max_rounds=1)
                return report

        return in_threads(witnessing_a, lambda: plain("b"), lambda: plain("c"))

    def accepted() -> tuple[int, bytes]:
        with CheckpointWitness(
            witness_file, audit_public_key=pinned, origin=ledger_origin(trio.federation)
        ) as witness:
            latest = witness.latest()
        assert latest is not None
        return latest.size, latest.root

    with running_coordinator(trio, tmp_path / "honest.db", config) as coord:
        first = take_part(coord.address)
    assert all(isinstance(r, RoundReport) for r in first), first
    seen = accepted()
    # an honest restart on the same database extends the log: the witness accepts (consistency proof)
    with running_coordinator(trio, tmp_path / "honest.db", config) as coord:
        second = take_part(coord.address)
    assert all(isinstance(r, RoundReport) for r in second), second
    extended = accepted()
    assert extended[0] > seen[0]
    # same audit key and consortium, but a new database: the history the silo saw is gone
    # (silo a now refuses at join, so the round waits for it no longer than a short advertise deadline)
    short = settings(n=3, rounds=3, length=LENGTH, deadlines=deadlines_with(advertise=SHORT))
    with running_coordinator(trio, tmp_path / "rewritten.db", short) as coord:
        third = take_part(coord.address)
    caught = third[0]
    assert isinstance(caught, AuditFailure), caught
    # refused at join, before training: a new study is the benign reading, a rewrite the other one
    assert "a new study needs a new federation id" in str(caught)
    assert "the coordinator rewrote its history" in str(caught)
    assert all(isinstance(r, RoundReport) for r in third[1:]), third
    assert accepted() == extended  # nothing from the rewritten log was accepted


# -- 5. restart reconciliation -------------------------------------------------------------------------------
def _verified_entries(trio: Consortium, ledger_db: Path, out: Path) -> list[LedgerEntry]:
    trail = audit_trail(trio, ledger_db)
    try:
        write_bundle(
            trail.ledger,
            out,
            roster_bytes=trio.paths.roster.read_bytes(),
            audit_public_key=trail.signer.public_key,
        )
    finally:
        trail.close()
    report, warnings = verify_bundle_dir(
        out,
        audit_public_key=bytes.fromhex(trio.paths.audit_public_key.read_text().strip()),
        consortium_public_key=trio.consortium_key,
        federation=trio.federation,
    )
    assert warnings == []
    assert report.anchors.fully_pinned
    return list(report.entries)


def test_rounds_missing_from_the_ledger_are_recorded_at_restart(
    trio: Consortium, tmp_path: Path
) -> None:
    config = settings(n=3, rounds=2, length=LENGTH)
    db = tmp_path / "c.db"
    with running_coordinator(trio, db, config) as coord:
        plain_rounds(trio, coord.address, rounds=ROUNDS)
        assert coord.service.wait_finished(10.0)
        records = coord.rounds()
    assert [r.status for r in records] == [RoundStatus.COMPLETED] * 2

    # the store knows both rounds; this ledger file has never seen them (lost, or a crash between the two)
    fresh = tmp_path / "fresh-ledger.db"
    store = SQLiteStore(db)
    service = MaskingRounds(
        settings=config,
        roster=trio.roster,
        store=store,
        initial_model=np.zeros(LENGTH, np.float32),
        audit=audit_trail(trio, fresh),
    )
    store.close()
    service.audit.close()

    entries = _verified_entries(trio, fresh, tmp_path / "bundle")
    kinds = [(e.event.kind, e.event.round) for e in entries]
    assert kinds == [
        (EventKind.FEDERATION_CREATED, None),
        (EventKind.PARTICIPANTS, 0),
        (EventKind.GLOBAL_MODEL, 0),
        (EventKind.ROUND_CLOSED, 0),
        (EventKind.PARTICIPANTS, 1),
        (EventKind.GLOBAL_MODEL, 1),
        (EventKind.ROUND_CLOSED, 1),
    ]
    for record in records:
        participants, model, closed = entries[1 + 3 * record.round : 4 + 3 * record.round]
        assert participants.event.body["recorded_at_restart"] is True
        assert closed.event.body["recorded_at_restart"] is True
        assert tuple(participants.event.body["survivors"]) == record.survivors
        assert model.event.body["model_hash"] == record.new_model_hash.hex()
        assert closed.event.body["global_model_hash"] == record.new_model_hash.hex()


def test_round_interrupted_by_a_restart_is_recorded_as_aborted(
    trio: Consortium, tmp_path: Path
) -> None:
    config = settings(n=3, rounds=1, length=LENGTH)
    db = tmp_path / "c.db"
    with running_coordinator(trio, db, config) as coord:
        ledger = coord.service.audit.ledger
        wait_until(
            lambda: any(e.event.kind is EventKind.ROUND_OPENED for e in ledger.decoded()),
            what="round 0 to open",
        )
    with running_coordinator(trio, db, config) as coord:
        (record,) = coord.rounds()
    assert record.status is RoundStatus.ABORTED

    entries = _verified_entries(trio, db, tmp_path / "bundle")
    (aborted,) = [e for e in entries if e.event.kind is EventKind.ROUND_ABORTED]
    assert aborted.event.round == 0
    assert aborted.event.body["recorded_at_restart"] is True
    assert aborted.event.body["reason"] == record.reason
    assert sum(e.event.kind is EventKind.FEDERATION_CREATED for e in entries) == 1


def test_report_of_a_federation_without_attestations(trio: Consortium, tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    with running_coordinator(trio, db, settings(n=3, rounds=1, length=LENGTH)) as coord:
        plain_rounds(trio, coord.address, rounds=1)
        assert coord.service.wait_finished(10.0)
    trail = audit_trail(trio, db)
    try:
        write_bundle(
            trail.ledger,
            tmp_path / "bundle",
            roster_bytes=trio.paths.roster.read_bytes(),
            audit_public_key=trail.signer.public_key,
        )
    finally:
        trail.close()
    verified, _ = verify_bundle_dir(
        tmp_path / "bundle",
        audit_public_key=bytes.fromhex(trio.paths.audit_public_key.read_text().strip()),
        consortium_public_key=trio.consortium_key,
        federation=trio.federation,
    )
    report = build_report(verified)
    rows = {row["id"]: row for row in report["silos"]}
    assert sorted(rows) == trio.silos
    assert all(row["epsilon_spent"] == 0.0 and row["rounds"] == [0] for row in rows.values())


def _without_xml_namespaces(html: str) -> str:
    """The page without the SVG and XLink namespace names (identifiers, never fetched)."""
    for namespace in ("http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"):
        html = html.replace(namespace, "")
    return html


# -- completeness: each silo's witness proves its own attestations are in the log ----------------------------
def _witnessed_round(
    trio: Consortium, address: str, tmp_path: Path
) -> dict[str, RoundReport | BaseException]:
    pinned = bytes.fromhex(trio.paths.audit_public_key.read_text().strip())

    def silo(name: str) -> Callable[[], RoundReport | BaseException]:
        def take_part() -> RoundReport | BaseException:
            path = tmp_path / f"{name}-witness.sqlite"
            with trio.sdk(name, address, audit_public_key=pinned, witness_path=path) as client:
                try:
                    (report,) = client.run(private_train(name), max_rounds=1)
                except AuditFailure as exc:
                    return exc
                return report

        return take_part

    names = ["a", "b", "c"]
    return dict(zip(names, in_threads(*[silo(n) for n in names]), strict=True))


def _drop_attestations_of(monkeypatch: pytest.MonkeyPatch, victim: str) -> None:
    """The attack: a coordinator that accepts ``victim``'s upload but leaves its attestation out of the log."""
    honest = AuditTrail.attestation

    def dropping(
        self: AuditTrail, attestation: PrivacyAttestation, *args: Any, **kwargs: Any
    ) -> None:
        if attestation.silo != victim:
            honest(self, attestation, *args, **kwargs)

    monkeypatch.setattr(AuditTrail, "attestation", dropping)


def test_each_silo_witness_proves_its_attestation_is_logged(
    trio: Consortium, tmp_path: Path
) -> None:
    """Defence, honest side: every silo finds its attestation and checks its inclusion proof."""
    with running_coordinator(trio, tmp_path / "honest.db", settings(n=3, length=LENGTH)) as coord:
        reports = _witnessed_round(trio, coord.address, tmp_path)
    assert all(isinstance(r, RoundReport) for r in reports.values()), reports
    pinned = bytes.fromhex(trio.paths.audit_public_key.read_text().strip())
    for name in reports:
        with CheckpointWitness(
            tmp_path / f"{name}-witness.sqlite",
            audit_public_key=pinned,
            origin=ledger_origin(trio.federation),
        ) as witness:
            assert len(witness.records("sent")) == 1
            assert witness.unconfirmed() == []  # proven in the accepted checkpoint


def test_a_coordinator_that_drops_one_attestation_is_caught_by_that_silos_witness(
    trio: Consortium, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: silo a's attestation is left out of the ledger (real gRPC, mTLS). Defence: a's witness raises
    AuditFailure in the same round, naming the round; b and c, whose attestations are logged, pass."""
    _drop_attestations_of(monkeypatch, "a")
    with running_coordinator(trio, tmp_path / "lying.db", settings(n=3, length=LENGTH)) as coord:
        reports = _witnessed_round(trio, coord.address, tmp_path)
    caught = reports["a"]
    assert isinstance(caught, AuditFailure), reports
    assert "round 0" in str(caught) and "privacy attestation" in str(caught)
    assert isinstance(reports["b"], RoundReport) and isinstance(reports["c"], RoundReport)
    pinned = bytes.fromhex(trio.paths.audit_public_key.read_text().strip())
    with CheckpointWitness(
        tmp_path / "a-witness.sqlite",
        audit_public_key=pinned,
        origin=ledger_origin(trio.federation),
    ) as witness:
        (failure,) = witness.records("audit_failure")
        assert failure.body["check"] == "completeness"
        assert len(witness.unconfirmed()) == 1


def test_without_the_completeness_check_the_dropped_attestation_goes_unnoticed(
    trio: Consortium, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Positive control: the same attack with the completeness check switched off passes every other check."""
    _drop_attestations_of(monkeypatch, "a")
    monkeypatch.setattr(Transport, "_check_completeness", lambda *args, **kwargs: None)
    with running_coordinator(trio, tmp_path / "lying.db", settings(n=3, length=LENGTH)) as coord:
        reports = _witnessed_round(trio, coord.address, tmp_path)
    assert all(isinstance(r, RoundReport) for r in reports.values()), reports


# -- fork detection: the silos' signed statements, checked by `audit verify --statement` ---------------------
def _latest_statement(witness_file: Path, pinned: bytes) -> WitnessStatement:
    with CheckpointWitness(
        witness_file, audit_public_key=pinned, origin=ledger_origin("fed")
    ) as witness:
        return WitnessStatement.loads(str(witness.records("statement")[-1].body["text"]))


def test_audit_verify_checks_the_silos_signed_statements(run: AuditRun, tmp_path: Path) -> None:
    """Defence: every silo's latest statement verifies against the bundle; a forged one (another key), a
    re-bound one and one vouching for a forked log signed by the real audit key are refused."""
    pinned = bytes.fromhex(run.consortium.paths.audit_public_key.read_text().strip())
    files: list[str | Path] = []
    for silo in ("a", "b", "c"):
        witness_file = run.witness_file.parent.parent / silo / "witness.sqlite"  # state/<silo>/
        statement = _latest_statement(witness_file, pinned)
        assert statement.silo == silo
        path = tmp_path / f"{silo}.json"
        path.write_text(statement.dumps(), encoding="utf-8")
        files += ["--statement", path]
    code, output = cli("audit", "verify", run.bundle, *run.keys, *files)
    assert code == 0, output
    assert "3 later checkpoints consistent" in output

    a = _latest_statement(run.witness_file, pinned)
    forged = sign_statement(Ed25519PrivateKey.generate(), federation="fed", silo="a", note=a.note)
    rebound = WitnessStatement(a.federation, "b", a.note, a.signature)
    audit_signer = CheckpointSigner(
        load_ed25519_private(run.consortium.paths.audit_key), key_name=ledger_origin("fed")
    )
    forked_note = audit_signer.sign(origin=ledger_origin("fed"), size=3, root=bytes(32)).text
    fork = sign_statement(
        run.consortium.signing_key("a"), federation="fed", silo="a", note=forked_note
    )
    for bad, problem in (
        (forged, "not signed by its roster key"),
        (rebound, "not signed by its roster key"),
        (fork, "checkpoint of size 3 disagrees with the bundle's entries"),
    ):
        path = tmp_path / "bad.json"
        path.write_text(bad.dumps(), encoding="utf-8")
        code, output = cli("audit", "verify", run.bundle, *run.keys, "--statement", path)
        assert code != 0 and problem in output, output
