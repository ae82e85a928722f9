"""Tamper suite on a real bundle: every kind of tampering fails, naming the problem."""

from __future__ import annotations

import gc
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from audits import (
    AuditBundle,
    CheckpointSigner,
    Event,
    EventKind,
    RdpEpsilonAccount,
    VerificationError,
    VerificationReport,
    load_bundle,
    verify_bundle,
    write_bundle,
)
from audits.canonical import canonical_json, parse_canonical
from audits.events import _freeze
from audits.verify import _same_json, _SignatureChecks, _signed_matches
from dp.accounting import DP_SGD_MECHANISM

from .conftest import (
    ORIGIN,
    PREFIX,
    Federation,
    build_federation,
    export,
    history_of,
    rdp_epsilon,
    secagg_rdp_epsilon,
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Federation, str]:
    base = tmp_path_factory.mktemp("pristine")
    fed = build_federation(base / "ledger.sqlite")
    older = fed.ledger.latest_checkpoint()
    assert older is not None
    write_bundle(
        fed.ledger, base / "bundle", roster_bytes=fed.roster, audit_public_key=fed.signer.public_key
    )
    # One more round after the export: a silo's witness holds this later checkpoint.
    fed.ledger.append(fed.event(EventKind.ROUND_OPENED, 4, {"model_hash": "ab" * 32}))
    later = fed.ledger.checkpoint(fed.signer)
    return base / "bundle", fed, later.text


def _copy(pristine: tuple[Path, Federation, str], tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(pristine[0], dst)
    return dst


def _verify(bundle: Path | AuditBundle, fed: Federation, **kw: object) -> object:
    return verify_bundle(
        bundle,
        silo_keys=fed.silo_keys,
        audit_public_key=fed.signer.public_key,
        recompute_epsilon=rdp_epsilon,
        **kw,
    )  # type: ignore[arg-type]


def _edit_lines(bundle: Path, edit: Callable[[list[bytes]], list[bytes]]) -> None:
    path = bundle / "entries.jsonl"
    lines = path.read_bytes()[:-1].split(b"\n")
    path.write_bytes(b"\n".join(edit(lines)) + b"\n")


def test_untouched_bundle_verifies(pristine: tuple[Path, Federation, str]) -> None:
    bundle, fed, _ = pristine
    report = verify_bundle(
        bundle,
        silo_keys=fed.silo_keys,
        audit_public_key=fed.signer.public_key,
        recompute_epsilon=rdp_epsilon,
    )
    assert report.checkpoint.size == len(report.entries) == 25
    assert report.attestations_checked == report.epsilons_recomputed == 8
    assert report.federation == "fed-1"


def test_flip_a_byte_in_an_entry(pristine: tuple[Path, Federation, str], tmp_path: Path) -> None:
    bundle = _copy(pristine, tmp_path)
    lines = (bundle / "entries.jsonl").read_bytes()[:-1].split(b"\n")
    target = next(i for i, line in enumerate(lines) if i > 4 and b'"model_hash"' in line)

    def flip(lines: list[bytes]) -> list[bytes]:
        # Change one digit of a model hash: still valid JSON, still a valid event.
        line = bytearray(lines[target])
        at = line.index(b'"model_hash":"') + len(b'"model_hash":"')
        line[at] = ord("0") if line[at] != ord("0") else ord("1")
        lines[target] = bytes(line)
        return lines

    _edit_lines(bundle, flip)
    with pytest.raises(VerificationError, match=rf"^entry {target}: does not match the hash"):
        _verify(bundle, pristine[1])


@pytest.mark.parametrize("position", [3, 12, 24])
def test_flip_any_byte_is_caught(
    pristine: tuple[Path, Federation, str], tmp_path: Path, position: int
) -> None:
    bundle = _copy(pristine, tmp_path)

    def flip(lines: list[bytes]) -> list[bytes]:
        line = bytearray(lines[position])
        line[len(line) // 2] ^= 0x01
        lines[position] = bytes(line)
        return lines

    _edit_lines(bundle, flip)
    with pytest.raises(VerificationError, match=rf"^entry {position}: "):
        _verify(bundle, pristine[1])


def test_delete_an_entry(pristine: tuple[Path, Federation, str], tmp_path: Path) -> None:
    bundle = _copy(pristine, tmp_path)
    _edit_lines(bundle, lambda lines: lines[:9] + lines[10:])
    with pytest.raises(VerificationError, match=r"^entry 9: claims index 10: an entry was deleted"):
        _verify(bundle, pristine[1])


def test_insert_an_entry(pristine: tuple[Path, Federation, str], tmp_path: Path) -> None:
    bundle = _copy(pristine, tmp_path)
    _edit_lines(bundle, lambda lines: [*lines[:5], lines[5], *lines[5:]])
    with pytest.raises(VerificationError, match=r"^entry 6: claims index 5"):
        _verify(bundle, pristine[1])


def test_insert_a_well_forged_entry(pristine: tuple[Path, Federation, str], tmp_path: Path) -> None:
    # The forger gives the inserted entry the right index and prev; the entry after it then
    # sits at the wrong position.
    bundle = _copy(pristine, tmp_path)

    def insert(lines: list[bytes]) -> list[bytes]:
        obj = json.loads(lines[5])
        obj["body"] = {"severity": "info", "description": "nothing to see", "silo": None}
        obj["kind"], obj["round"] = "incident", None
        return [*lines[:5], canonical_json(obj), *lines[5:]]

    _edit_lines(bundle, insert)
    with pytest.raises(VerificationError, match=r"^entry 6: claims index 5"):
        _verify(bundle, pristine[1])


def test_reorder_entries(pristine: tuple[Path, Federation, str], tmp_path: Path) -> None:
    bundle = _copy(pristine, tmp_path)

    def swap(lines: list[bytes]) -> list[bytes]:
        lines[7], lines[8] = lines[8], lines[7]
        return lines

    _edit_lines(bundle, swap)
    with pytest.raises(VerificationError, match=r"^entry 7: claims index 8"):
        _verify(bundle, pristine[1])


def test_truncate_against_own_and_later_checkpoint(
    pristine: tuple[Path, Federation, str], tmp_path: Path
) -> None:
    bundle, fed, later = pristine
    cut = _copy(pristine, tmp_path)
    _edit_lines(cut, lambda lines: lines[:-2])
    with pytest.raises(VerificationError, match=r"^truncated: bundle has 23 entries"):
        _verify(cut, fed)
    # A self-consistent older export (a coordinator hiding its last round) verifies on its
    # own, but not against the later checkpoint a silo's witness kept.
    _verify(bundle, fed)
    with pytest.raises(VerificationError, match=r"^truncated: .* commits to 26"):
        _verify(bundle, fed, checkpoints=[later])


def test_swap_checkpoint_signature(pristine: tuple[Path, Federation, str], tmp_path: Path) -> None:
    bundle = _copy(pristine, tmp_path)
    fed = pristine[1]
    text = (bundle / "checkpoint.txt").read_text()
    body = text.split("\n\n")[0] + "\n"
    # A signature line by another key (with the same name) replaces the coordinator's.
    impostor = CheckpointSigner.generate(key_name=ORIGIN)
    forged = impostor.sign(origin=ORIGIN, size=25, root=fed.ledger.root(25)).text.split("\n\n")[1]
    (bundle / "checkpoint.txt").write_text(body + "\n" + forged)
    with pytest.raises(VerificationError, match=r"^checkpoint: not signed by the pinned audit key"):
        _verify(bundle, fed)
    # Signature of a different checkpoint pasted under this body.
    other = fed.signer.sign(origin=ORIGIN, size=24, root=fed.ledger.root(24)).text.split("\n\n")[1]
    (bundle / "checkpoint.txt").write_text(body + "\n" + other)
    with pytest.raises(VerificationError, match=r"^checkpoint: signature .* is invalid"):
        _verify(bundle, fed)


def test_alter_one_attestation_epsilon(
    pristine: tuple[Path, Federation, str], tmp_path: Path
) -> None:
    bundle = _copy(pristine, tmp_path)
    fed = pristine[1]
    lines = (bundle / "entries.jsonl").read_bytes()[:-1].split(b"\n")
    target = next(i for i, line in enumerate(lines) if b'"privacy_attestation"' in line)

    def alter(lines: list[bytes]) -> list[bytes]:
        obj = json.loads(lines[target])
        obj["body"]["attestation"]["epsilon"] = obj["body"]["attestation"]["epsilon"] / 2
        lines[target] = canonical_json(obj)
        return lines

    _edit_lines(bundle, alter)
    with pytest.raises(
        VerificationError,
        match=rf"^entry {target}: attestation of silo .* differs from what the silo signed",
    ):
        _verify(bundle, fed)


def test_coordinator_rebuilt_log_with_lying_recomputed_epsilon(tmp_path: Path) -> None:
    # A dishonest coordinator writes (and signs!) a log whose recorded epsilon is wrong: the
    # hashes all hold, the recomputation does not.
    fed = build_federation(tmp_path / "l.sqlite", rounds=1)
    history = [
        dict(json.loads(e)["body"]["attestation"])
        for e in fed.ledger.entries()
        if b'"silo":"hospital-a"' in e and b'"privacy_attestation"' in e
    ]
    event = fed.attestation_event("hospital-a", 2, history)
    body = dict(event.to_json()["body"])
    body["recomputed_epsilon"] = 0.01
    fed.ledger.append(fed.event(EventKind.PRIVACY_ATTESTATION, 2, body))
    fed.ledger.checkpoint(fed.signer)
    bundle = load_bundle(
        write_bundle(
            fed.ledger,
            tmp_path / "b",
            roster_bytes=fed.roster,
            audit_public_key=fed.signer.public_key,
        )
    )
    with pytest.raises(VerificationError, match=r"coordinator recorded 0\.01"):
        _verify(bundle, fed)
    # Without the hook the hashes and signatures still verify.
    verify_bundle(bundle, silo_keys=fed.silo_keys, audit_public_key=fed.signer.public_key)
    # An unknown silo key is refused.
    keys = {k: v for k, v in fed.silo_keys.items() if k != "hospital-b"}
    with pytest.raises(VerificationError, match="not in the roster"):
        verify_bundle(bundle, silo_keys=keys, audit_public_key=fed.signer.public_key)
    fed.ledger.close()


def test_wrong_pinned_audit_key(pristine: tuple[Path, Federation, str]) -> None:
    bundle, fed, _ = pristine
    with pytest.raises(VerificationError, match="pinned audit public key"):
        verify_bundle(
            bundle,
            silo_keys=fed.silo_keys,
            audit_public_key=CheckpointSigner.generate(key_name="x").public_key,
        )


# --------------------------------------------------------------- epsilon: claim direction


def _claiming(tmp_path: Path, factor: float) -> tuple[Federation, AuditBundle]:
    """One round, then hospital-a signs a round-2 claim of ``factor`` x its true epsilon."""
    fed = build_federation(tmp_path / "l.sqlite", rounds=1, secagg_accountant=True)
    history = history_of(fed, "hospital-a")
    true = secagg_rdp_epsilon("hospital-a", [*history, dict(history[-1], round=2)])
    fed.ledger.append(fed.attestation_event("hospital-a", 2, history, epsilon=true * factor))
    return fed, export(fed, tmp_path / "b")


def _verify_running(bundle: AuditBundle, fed: Federation, **kw: object) -> VerificationReport:
    return verify_bundle(
        bundle,
        silo_keys=fed.silo_keys,
        audit_public_key=fed.signer.public_key,
        epsilon_accounts=RdpEpsilonAccount,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("factor", [1.5, 1 + 1e-9, 1 - 1e-7])
def test_over_reported_epsilon_is_accepted(tmp_path: Path, factor: float) -> None:
    # A silo may count a round whose upload never reached the ledger: a higher claim is fine,
    # and so is one below by less than the relative tolerance (another library's last digits).
    fed, bundle = _claiming(tmp_path, factor)
    report = _verify_running(bundle, fed)
    assert report.epsilons_recomputed == report.attestations_checked == 4
    fed.ledger.close()


@pytest.mark.parametrize("factor", [1 - 1e-5, 0.5, 0.0])
def test_under_reported_epsilon_is_rejected(tmp_path: Path, factor: float) -> None:
    fed, bundle = _claiming(tmp_path, factor)
    index = len(bundle.entries) - 1
    with pytest.raises(
        VerificationError, match=rf"^entry {index}: silo 'hospital-a' under-reports epsilon"
    ):
        _verify_running(bundle, fed)
    # The whole-history hook applies the same rule.
    with pytest.raises(VerificationError, match="under-reports epsilon"):
        verify_bundle(
            bundle,
            silo_keys=fed.silo_keys,
            audit_public_key=fed.signer.public_key,
            recompute_epsilon=secagg_rdp_epsilon,
        )
    fed.ledger.close()


@pytest.mark.parametrize("factor", [1.01, 0.99])
def test_recorded_epsilon_must_match_in_both_directions(tmp_path: Path, factor: float) -> None:
    fed = build_federation(tmp_path / "l.sqlite", rounds=1, secagg_accountant=True)
    event = fed.attestation_event("hospital-a", 2, history_of(fed, "hospital-a"))
    body = dict(event.to_json()["body"])  # type: ignore[arg-type]
    body["recomputed_epsilon"] = float(body["recomputed_epsilon"]) * factor  # type: ignore[arg-type]
    fed.ledger.append(fed.event(EventKind.PRIVACY_ATTESTATION, 2, body))
    bundle = export(fed, tmp_path / "b")
    for hook in (
        {"epsilon_accounts": RdpEpsilonAccount},
        {"recompute_epsilon": secagg_rdp_epsilon},
    ):
        with pytest.raises(VerificationError, match="but the coordinator recorded"):
            verify_bundle(
                bundle,
                silo_keys=fed.silo_keys,
                audit_public_key=fed.signer.public_key,
                **hook,  # type: ignore[arg-type]
            )
    fed.ledger.close()


# ------------------------------------------------------- epsilon: running per-silo account


@pytest.fixture(scope="module")
def secagg_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[AuditBundle, Federation]:
    base = tmp_path_factory.mktemp("secagg")
    fed = build_federation(base / "ledger.sqlite", secagg_accountant=True)
    bundle = load_bundle(
        write_bundle(
            fed.ledger,
            base / "bundle",
            roster_bytes=fed.roster,
            audit_public_key=fed.signer.public_key,
        )
    )
    return bundle, fed


def test_running_account_equals_whole_history_recomputation(
    secagg_bundle: tuple[AuditBundle, Federation],
) -> None:
    bundle, fed = secagg_bundle
    common = {"silo_keys": fed.silo_keys, "audit_public_key": fed.signer.public_key}
    running = verify_bundle(bundle, epsilon_accounts=RdpEpsilonAccount, **common)  # type: ignore[arg-type]
    whole = verify_bundle(bundle, recompute_epsilon=secagg_rdp_epsilon, **common)  # type: ignore[arg-type]
    assert running.epsilons_recomputed == whole.epsilons_recomputed == 8
    assert running.entries == whole.entries


def test_rdp_account_matches_recompute_epsilon_exactly() -> None:
    account = RdpEpsilonAccount("silo-a")
    history: list[dict[str, object]] = []
    for i, (sigma, q, steps) in enumerate([(1.1, 0.02, 50), (0.8, 0.05, 10), (1.1, 0.02, 50)]):
        att = {
            "mechanism": DP_SGD_MECHANISM,
            "noise_multiplier": sigma,
            "sample_rate": q,
            "steps": steps,
            "delta": 1e-5,
            "round": i,
        }
        history.append(att)
        account.add(att)
        assert account.epsilons()[-1] == secagg_rdp_epsilon("silo-a", history)
    assert len(account.epsilons()) == 3
    assert "silo-a" in repr(account)


def test_rdp_account_refuses_mechanisms_it_cannot_recompute(
    pristine: tuple[Path, Federation, str],
) -> None:
    bundle, fed, _ = pristine  # labelled "dp-sgd", not dp.accounting's DP-SGD mechanism
    with pytest.raises(
        VerificationError, match=r"recomputing epsilon of silo .* cannot recompute epsilon"
    ):
        verify_bundle(
            bundle,
            silo_keys=fed.silo_keys,
            audit_public_key=fed.signer.public_key,
            epsilon_accounts=RdpEpsilonAccount,
        )
    with pytest.raises(ValueError, match="no 'noise_multiplier'"):
        RdpEpsilonAccount("x").add({"mechanism": DP_SGD_MECHANISM, "delta": 1e-5})
    step = {"mechanism": DP_SGD_MECHANISM, "noise_multiplier": 1.0, "sample_rate": 0.1}
    for delta in (0.0, 1.0, "1e-5", None):
        with pytest.raises(ValueError, match="delta"):
            RdpEpsilonAccount("x").add(step | {"steps": 3, "delta": delta})


def test_running_account_catches_a_lying_coordinator(tmp_path: Path) -> None:
    fed = build_federation(tmp_path / "l.sqlite", rounds=2, secagg_accountant=True)
    event = fed.attestation_event("hospital-b", 3, history_of(fed, "hospital-b"))
    body = dict(event.to_json()["body"])  # type: ignore[arg-type]
    body["recomputed_epsilon"] = 0.01
    fed.ledger.append(fed.event(EventKind.PRIVACY_ATTESTATION, 3, body))
    fed.ledger.checkpoint(fed.signer)
    bundle = write_bundle(
        fed.ledger, tmp_path / "b", roster_bytes=fed.roster, audit_public_key=fed.signer.public_key
    )
    with pytest.raises(VerificationError, match=r"coordinator recorded 0\.01"):
        verify_bundle(
            bundle,
            silo_keys=fed.silo_keys,
            audit_public_key=fed.signer.public_key,
            epsilon_accounts=RdpEpsilonAccount,
        )
    fed.ledger.close()


def test_a_failing_account_is_reported_not_raised(
    secagg_bundle: tuple[AuditBundle, Federation],
) -> None:
    bundle, fed = secagg_bundle
    first = next(
        i
        for i, e in enumerate(bundle.entries)
        if b'"privacy_attestation"' in e and b'"silo":"hospital-a"' in e
    )

    class Broken:
        """Fails where the test says: in add, in the bulk conversion, or by miscounting."""

        fail_in = "add"

        def __init__(self, silo: str) -> None:
            self.count = 0

        def add(self, attestation: object) -> None:
            if self.fail_in == "add":
                raise RuntimeError("accountant exploded")
            self.count += 1

        def epsilons(self) -> list[float]:
            if self.fail_in == "epsilons":
                raise RuntimeError("conversion exploded")
            return [1.0] * (self.count - 1)

    for fail_in, message in [
        ("add", "failed: accountant exploded"),
        ("epsilons", "failed: conversion exploded"),
        ("count", r"failed: \d+ epsilons for \d+ attestations"),
    ]:
        Broken.fail_in = fail_in
        # Every silo's account fails: the earliest entry is named, with its silo.
        with pytest.raises(VerificationError, match=rf"^entry {first}: .*'hospital-a' {message}"):
            verify_bundle(
                bundle,
                silo_keys=fed.silo_keys,
                audit_public_key=fed.signer.public_key,
                epsilon_accounts=Broken,
            )


def test_the_earliest_refuted_epsilon_is_named_before_a_later_failure(tmp_path: Path) -> None:
    # Two silos under-report in different rounds (their claims are validly signed), and a
    # later entry is out of place: the bulk epsilon check still names the earliest entry.
    fed = build_federation(tmp_path / "l.sqlite", rounds=1, secagg_accountant=True)
    bad: list[int] = []
    for silo, rnd in (("hospital-b", 2), ("hospital-a", 3)):
        history = history_of(fed, silo)
        event = fed.attestation_event(silo, rnd, history, epsilon=1e-3)
        body = dict(event.to_json()["body"])  # type: ignore[arg-type]
        bad.append(fed.ledger.size)
        fed.ledger.append(fed.event(EventKind.PRIVACY_ATTESTATION, rnd, body))
    stray = Event.now(
        EventKind.ROUND_OPENED,
        federation="another-federation",
        round=4,
        body={"model_hash": "ab" * 32},
        clock=fed.clock,
    )
    fed.ledger.append(stray)
    fed.ledger.checkpoint(fed.signer)
    bundle = write_bundle(
        fed.ledger, tmp_path / "b", roster_bytes=fed.roster, audit_public_key=fed.signer.public_key
    )
    with pytest.raises(
        VerificationError, match=rf"^entry {bad[0]}: silo 'hospital-b' under-reports"
    ):
        verify_bundle(
            bundle,
            silo_keys=fed.silo_keys,
            audit_public_key=fed.signer.public_key,
            epsilon_accounts=RdpEpsilonAccount,
        )
    fed.ledger.close()


def test_bad_arguments(secagg_bundle: tuple[AuditBundle, Federation]) -> None:
    bundle, fed = secagg_bundle
    common = {"silo_keys": fed.silo_keys, "audit_public_key": fed.signer.public_key}
    with pytest.raises(ValueError, match="not both"):
        verify_bundle(
            bundle,
            recompute_epsilon=secagg_rdp_epsilon,
            epsilon_accounts=RdpEpsilonAccount,
            **common,  # type: ignore[arg-type]
        )
    for workers in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="workers"):
            verify_bundle(bundle, workers=workers, **common)  # type: ignore[arg-type]


# ---------------------------------------------------------------- signatures on a thread pool


def _forged_signatures(base: Path, bad: set[int]) -> tuple[Federation, AuditBundle, list[int]]:
    """A self-consistent log (a dishonest coordinator re-signed it) whose attestations at the
    ``bad`` positions (0-based, among those appended here) carry a silo signature over other
    bytes."""
    fed = build_federation(base / "l.sqlite", rounds=1, secagg_accountant=True)
    histories = {s: history_of(fed, s) for s in ("hospital-a", "hospital-b", "hospital-c")}
    positions = []
    for rnd in range(2, 6):
        for silo, history in histories.items():
            event = fed.attestation_event(silo, rnd, history)
            body = dict(event.to_json()["body"])  # type: ignore[arg-type]
            if len(positions) in bad:
                body["signature"] = fed.silo_private[silo].sign(b"something else").hex()
            positions.append(fed.ledger.append(fed.event(EventKind.PRIVACY_ATTESTATION, rnd, body)))
    return fed, export(fed, base / "b"), positions


@pytest.fixture(scope="module")
def forged(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Federation, AuditBundle, list[int]]]:
    fed, bundle, positions = _forged_signatures(tmp_path_factory.mktemp("forged"), bad={4, 9})
    yield fed, bundle, positions
    fed.ledger.close()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_earliest_bad_signature_is_named_with_any_pool(
    forged: tuple[Federation, AuditBundle, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
) -> None:
    # Tiny chunks so the pool gets many tasks and finishes them in any order.
    monkeypatch.setattr("audits.verify._SIGNATURE_CHUNK", 2)
    fed, bundle, positions = forged
    with pytest.raises(
        VerificationError,
        match=rf"^entry {positions[4]}: attestation signature of silo 'hospital-b' is invalid",
    ):
        _verify_running(bundle, fed, workers=workers)


def test_the_decoding_process_takes_its_share_of_an_unstarted_backlog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("audits.verify._SIGNATURE_CHUNK", 2)
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    jobs = [
        (i, "a", raw, key.sign(b"other" if i in (3, 6) else b"x%d" % i), b"x%d" % i)
        for i in range(9)
    ]
    gate = threading.Event()
    with _RecordingPool() as pool:
        pool.submit(gate.wait)  # the only worker is busy: nothing submitted below starts
        checks = _SignatureChecks(pool, 1)
        for job in jobs:
            checks.add(job)
        submitted = pool.futures[1:]  # four chunks of two; job 8 is still pending
        assert len(submitted) == 4
        threading.Timer(0.2, gate.set).start()  # the worker frees up while this process works
        assert checks.first_bad() == (3, "a")
    # this process took half of the unstarted backlog, from the end; the worker the rest
    assert [f.cancelled() for f in submitted] == [False, False, True, True]
    assert checks.first_bad() is None  # everything was consumed


class _RecordingPool(ThreadPoolExecutor):
    """One worker thread that remembers every future it handed out (what the checks were given)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.futures: list[Future[Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        self.futures.append(future)
        return future


def test_pool_and_inline_give_the_same_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("audits.verify._SIGNATURE_CHUNK", 3)
    fed, bundle, _ = _forged_signatures(tmp_path, bad=set())
    inline = _verify_running(bundle, fed)
    pooled = _verify_running(bundle, fed, workers=2)
    assert inline == pooled
    assert pooled.attestations_checked == pooled.epsilons_recomputed == 15
    fed.ledger.close()


# ------------------------------------------------- what the silo signed vs what was logged


@pytest.mark.parametrize(
    ("signed", "logged", "ok"),
    [
        (1.0, 1, True),  # JSON numbers by value: the silo's 1.0 is the canonical 1
        (True, 1, False),  # but a bool is not a number
        (1, True, False),
        (False, 0, False),
        ([1, 2], [1, 2], True),
        ({"a": 1}, [1], False),
        ("1", 1, False),
    ],
)
def test_signed_and_logged_attestation_must_be_the_same_json(
    tmp_path: Path, signed: object, logged: object, ok: bool
) -> None:
    fed = build_federation(tmp_path / "l.sqlite", rounds=1, secagg_accountant=True)
    event = fed.attestation_event("hospital-a", 2, history_of(fed, "hospital-a"))
    body = dict(event.to_json()["body"])  # type: ignore[arg-type]
    attestation = dict(body["attestation"])  # type: ignore[arg-type]
    attestation["extra"] = signed
    payload = PREFIX + json.dumps(attestation, sort_keys=True, separators=(",", ":")).encode()
    body["signing_payload"] = payload.hex()
    body["signature"] = fed.silo_private["hospital-a"].sign(payload).hex()
    body["attestation"] = dict(attestation, extra=logged)
    fed.ledger.append(fed.event(EventKind.PRIVACY_ATTESTATION, 2, body))
    bundle = export(fed, tmp_path / "b")
    if ok:
        _verify_running(bundle, fed)
    else:
        with pytest.raises(VerificationError, match="differs from what the silo signed"):
            _verify_running(bundle, fed)
    fed.ledger.close()


_leaf = st.one_of(
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from([0.0, 1.0, 2.0, 0.5, 1e-05]),
    st.none(),
    st.sampled_from(["", "1", "true"]),
)
_values = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(signed=st.dictionaries(st.sampled_from("abcd"), _values, max_size=4), data=st.data())
def test_signed_matches_agrees_with_json_equality(
    signed: dict[str, object], data: st.DataObject
) -> None:
    # The logged side as the verifier sees it: canonical bytes, decoded and frozen.
    logged = data.draw(
        st.one_of(st.just(signed), st.dictionaries(st.sampled_from("abcd"), _values, max_size=4))
    )
    entry = canonical_json(logged)
    frozen_logged = _freeze(parse_canonical(entry))
    payload = PREFIX + json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()
    assert _signed_matches(payload, frozen_logged, entry) == _same_json(signed, frozen_logged)


def test_pool_started_beside_other_threads(
    forged: tuple[Federation, AuditBundle, list[int]],
) -> None:
    # Another thread is running: no fork (it could copy a held lock); forkserver instead.
    fed, bundle, positions = forged
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        with pytest.raises(VerificationError, match=rf"^entry {positions[4]}: attestation sig"):
            _verify_running(bundle, fed, workers=2)
    finally:
        release.set()
        other.join()


def test_verification_leaves_the_garbage_collector_as_it_was(
    secagg_bundle: tuple[AuditBundle, Federation],
) -> None:
    bundle, fed = secagg_bundle
    assert gc.isenabled()
    _verify_running(bundle, fed)
    assert gc.isenabled()
    gc.disable()
    try:
        _verify_running(bundle, fed)
        assert not gc.isenabled()
    finally:
        gc.enable()
