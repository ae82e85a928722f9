"""Tamper suite on a real bundle: every kind of tampering fails, naming the problem."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from audits import (
    AuditBundle,
    CheckpointSigner,
    EventKind,
    VerificationError,
    load_bundle,
    verify_bundle,
    write_bundle,
)
from audits.canonical import canonical_json

from .conftest import ORIGIN, Federation, build_federation, rdp_epsilon


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
