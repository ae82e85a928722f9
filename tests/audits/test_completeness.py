"""Completeness and trust anchors: a ledger that verifies hash for hash can still leave facts out.

Each attack is a coordinator (the ledger writer, :class:`~tests.audits.conftest.Writer`) that signs a
self-consistent log missing one fact a completed round must have. The positive control of each case
is the :class:`~audits.CompletenessError` itself: it carries what *did* verify, which is what the
verifier without the completeness rules returned (every hash, signature and epsilon holds), so the
completeness check is what fails and nothing else; and the honest writer's bundle verifies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from audits import (
    Anchor,
    AuditBundle,
    CompletenessError,
    EventKind,
    VerificationError,
    VerificationReport,
    verify_bundle,
)

from .conftest import (
    ORIGIN,
    Federation,
    Writer,
    build_federation,
    export,
    history_of,
    rdp_epsilon,
    roster_fingerprint,
    session_of,
    silo_level_release,
)


def _bundle(tmp_path: Path, writer: Writer, rounds: int = 3) -> tuple[Federation, AuditBundle]:
    fed = build_federation(tmp_path / "l.sqlite", rounds, writer=writer)
    bundle = export(fed, tmp_path / "b")
    fed.ledger.close()
    return fed, bundle


def _verify(bundle: AuditBundle, fed: Federation, **kw: object) -> VerificationReport:
    pins: dict[str, object] = {
        "origin": ORIGIN,
        "roster_fingerprint": roster_fingerprint(fed.roster),
    }
    return verify_bundle(
        bundle,
        silo_keys=fed.silo_keys,
        audit_public_key=fed.signer.public_key,
        recompute_epsilon=rdp_epsilon,
        **pins | kw,  # type: ignore[arg-type]
    )


def _incomplete(bundle: AuditBundle, fed: Federation, message: str) -> VerificationReport:
    """The first gap is named exactly; returns what verified before completeness was judged."""
    with pytest.raises(CompletenessError) as info:
        _verify(bundle, fed)
    assert str(info.value) == message
    verified = info.value.verified
    # positive control: every other rule held (the verifier without the completeness rules passes)
    assert verified.checkpoint.size == len(bundle.entries) == len(verified.entries)
    assert verified.epsilons_recomputed == verified.attestations_checked
    return verified


def test_the_honest_writer_is_complete(tmp_path: Path) -> None:
    fed, bundle = _bundle(tmp_path, Writer(silo_level=True))
    report = _verify(bundle, fed)
    assert report.attestations_checked == 8
    assert report.notes == ()


def test_a_coordinator_that_omits_one_silos_attestation_is_caught(tmp_path: Path) -> None:
    fed, bundle = _bundle(tmp_path, Writer(omit_attestation=(2, "hospital-b")))
    participants = next(
        i for i, e in enumerate(bundle.entries) if b'"participants"' in e and b'"round":2' in e
    )
    verified = _incomplete(
        bundle,
        fed,
        f"incomplete: round 2, silo 'hospital-b': took part in the completed round "
        f"(participants, entry {participants}) but has no privacy attestation for it",
    )
    assert verified.attestations_checked == 7  # one fewer than the honest ledger's eight


def test_a_participants_record_naming_another_session_is_caught(tmp_path: Path) -> None:
    other = "ee" * 32
    fed, bundle = _bundle(tmp_path, Writer(participants_session={3: other}))
    attestation = next(
        i
        for i, e in enumerate(bundle.entries)
        if b'"privacy_attestation"' in e and b'"round":3' in e and b'"silo":"hospital-a"' in e
    )
    participants = next(
        i for i, e in enumerate(bundle.entries) if b'"participants"' in e and b'"round":3' in e
    )
    _incomplete(
        bundle,
        fed,
        f"incomplete: round 3, silo 'hospital-a': its attestation (entry {attestation}) is bound "
        f"to session {session_of(3)[:16]}..., the round's participants record (entry "
        f"{participants}) names session {other[:16]}...",
    )


def test_a_missing_silo_level_release_is_caught(tmp_path: Path) -> None:
    fed, bundle = _bundle(tmp_path, Writer(silo_level=True, omit_release=2))
    closed = next(
        i for i, e in enumerate(bundle.entries) if b'"round_closed"' in e and b'"round":2' in e
    )
    _incomplete(
        bundle,
        fed,
        f"incomplete: round 2: completed (entry {closed}) but its silo-level DP release is not recorded",
    )


def test_a_release_that_composes_too_few_rounds_is_caught(tmp_path: Path) -> None:
    # The coordinator records every round's release but round 3's composes only two rounds: a
    # release it made is missing from the composition (and from the reported epsilon).
    fed = build_federation(tmp_path / "l.sqlite", 2, writer=Writer(silo_level=True))
    fed.ledger.append_many(
        [
            fed.event(EventKind.ROUND_OPENED, 3, {"model_hash": "ab" * 32}),
            fed.event(
                EventKind.PARTICIPANTS,
                3,
                {"survivors": [], "dropped": [], "session_id": session_of(3)},
            ),
            fed.event(
                EventKind.ROUND_CLOSED,
                3,
                {"global_model_hash": "cd" * 32, "silo_level_dp": silo_level_release(2, 3)},
            ),
        ]
    )
    bundle = export(fed, tmp_path / "b")
    closed = len(bundle.entries) - 1
    _incomplete(
        bundle,
        fed,
        f"incomplete: round 3: its silo-level DP release (entry {closed}) composes 2 round(s), "
        "but it is completed round number 3: a release is missing",
    )
    fed.ledger.close()


def test_without_record_level_privacy_no_attestation_is_required(tmp_path: Path) -> None:
    fed, bundle = _bundle(tmp_path, Writer(record_level=False))
    report = _verify(bundle, fed)
    assert report.attestations_checked == 0
    assert b'"privacy"' not in bundle.entries[0]


def test_a_round_recorded_at_restart_names_no_session_and_gets_a_note(tmp_path: Path) -> None:
    fed = build_federation(tmp_path / "l.sqlite", 1, writer=Writer(silo_level=True))
    attestations = [
        fed.attestation_event(s, 2, history_of(fed, s)) for s in ("hospital-a", "hospital-b")
    ]
    # the attestations reached the ledger during the round; the coordinator crashed between its
    # store and its ledger, and rebuilt the end of the round from the store on restart
    rebuilt = {"recorded_at_restart": True}
    fed.ledger.append_many(
        [
            fed.event(EventKind.ROUND_OPENED, 2, {"model_hash": "ab" * 32}),
            *attestations,
            fed.event(
                EventKind.PARTICIPANTS,
                2,
                {"survivors": ["hospital-a", "hospital-b"], "dropped": ["hospital-c"]} | rebuilt,
            ),
            fed.event(EventKind.ROUND_CLOSED, 2, {"global_model_hash": "cd" * 32} | rebuilt),
        ]
    )
    report = _verify(export(fed, tmp_path / "b"), fed)
    assert [note.split(":")[0] for note in report.notes] == ["Round 2", "Round 2"]
    assert "recorded at restart, the participants record names no session" in report.notes[0]
    assert "keeps no silo-level DP facts" in report.notes[1]
    fed.ledger.close()


# ------------------------------------------------------------------------------ trust anchors


def test_a_swapped_roster_is_refused_naming_both_fingerprints(tmp_path: Path) -> None:
    fed, bundle = _bundle(tmp_path, Writer())
    other = fed.roster.replace(b"hospital-a", b"hospital-x")
    recorded = roster_fingerprint(fed.roster)
    with pytest.raises(VerificationError) as info:
        _verify(bundle, fed, roster_fingerprint=roster_fingerprint(other))
    assert not isinstance(info.value, CompletenessError)
    assert str(info.value) == (
        f"bundle: roster.json (fingerprint {roster_fingerprint(other)}) is not the roster the "
        f"federation was created with (federation_created, entry 0, records {recorded}): "
        "a swapped roster"
    )


def test_anchors_say_what_was_pinned(tmp_path: Path) -> None:
    fed, bundle = _bundle(tmp_path, Writer())
    consortium = b"\x07" * 32
    full = _verify(bundle, fed, consortium_public_key=consortium)
    assert full.anchors.pinned == frozenset(Anchor)
    assert full.anchors.fully_pinned and full.anchors.roster_checked
    assert full.anchors.origin == ORIGIN
    assert full.anchors.roster_fingerprint == roster_fingerprint(fed.roster)
    assert full.roster_members == tuple(sorted(fed.silo_keys))
    # the keys a caller read from the bundle itself are recorded as such, never as pinned
    partial = _verify(bundle, fed, consortium_public_key=consortium, unpinned=[Anchor.AUDIT_KEY])
    assert partial.anchors.unpinned == (Anchor.AUDIT_KEY,)
    assert not partial.anchors.fully_pinned
    # no origin given: the checkpoint's own, not pinned; no roster fingerprint: not checked
    bare = verify_bundle(bundle, silo_keys=fed.silo_keys, audit_public_key=fed.signer.public_key)
    assert bare.anchors.unpinned == (Anchor.CONSORTIUM_KEY, Anchor.ORIGIN)
    assert not bare.anchors.roster_checked
    assert dataclasses.replace(bare, anchors=full.anchors).entries == full.entries


def test_a_wrong_pinned_origin_is_refused(tmp_path: Path) -> None:
    fed, bundle = _bundle(tmp_path, Writer())
    with pytest.raises(VerificationError, match=r"^checkpoint: "):
        _verify(bundle, fed, origin="secagg/federation/another")


def test_notes_on_an_old_ledger_are_one_sentence_not_one_per_round(tmp_path: Path) -> None:
    # a coordinator older than the session record: every participants record names no session
    fed, bundle = _bundle(tmp_path, Writer(participants_session=dict.fromkeys((1, 2, 3), None)))
    report = _verify(bundle, fed)
    assert len(report.notes) == 1
    assert report.notes[0].startswith(
        "Rounds 1-3: the participants record (written by a coordinator older"
    )
