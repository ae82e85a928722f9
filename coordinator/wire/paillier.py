"""Paillier mode: protobuf <-> dataclass translation of commitments, requests, challenges, folds, openings and
partial decryptions."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from coordinator.errors import (
    InvalidInput,
)
from coordinator.proto.v1 import paillier_pb2 as ppb
from secagg.hazmat.paillier import ObfuscatorMode, PartialDecryption, PlaintextProof, int_to_bytes
from secagg.paillier import (
    DecryptionRequest,
    FoldAnswer,
    FoldRequest,
    PartialDecryptionMessage,
    SignedCommitment,
    SpotCheckChallenge,
    SpotCheckOpening,
    SpotCheckResponse,
)

# ----------------------------------------------------------------------------------------------------------------
# Wire conversions (only the servicer and the silo SDK touch protobuf classes)


def _int(data: bytes) -> int:
    return int.from_bytes(data, "big")


def proof_to_pb(p: PlaintextProof) -> ppb.PlaintextProof:
    """Dataclass -> wire."""
    return ppb.PlaintextProof(
        form=p.form.value,
        commitment=int_to_bytes(p.commitment),
        response=int_to_bytes(p.response),
        randomness=int_to_bytes(p.randomness),
    )


def proof_from_pb(m: ppb.PlaintextProof) -> PlaintextProof:
    """Wire -> dataclass.

    Raises:
        InvalidInput: an unknown proof form.
    """
    try:
        form = ObfuscatorMode(m.form)
    except ValueError as exc:
        raise InvalidInput(f"unknown proof form {m.form!r}") from exc
    return PlaintextProof(
        form=form,
        commitment=_int(m.commitment),
        response=_int(m.response),
        randomness=_int(m.randomness),
    )


def commitment_to_pb(c: SignedCommitment) -> ppb.SignedCommitment:
    """Dataclass -> wire."""
    return ppb.SignedCommitment(
        silo=c.silo_id,
        context=c.context,
        vector_length=c.vector_length,
        ciphertext_count=c.ciphertext_count,
        merkle_root=c.merkle_root,
        signature=c.signature,
        knowledge_fold=int_to_bytes(c.knowledge_fold),
        knowledge_proof=proof_to_pb(c.knowledge_proof),
    )


def commitment_from_pb(m: ppb.SignedCommitment) -> SignedCommitment:
    """Wire -> dataclass.

    Raises:
        InvalidInput: an unknown proof form.
    """
    return SignedCommitment(
        silo_id=m.silo,
        context=bytes(m.context),
        vector_length=int(m.vector_length),
        ciphertext_count=int(m.ciphertext_count),
        merkle_root=bytes(m.merkle_root),
        knowledge_fold=_int(m.knowledge_fold),
        knowledge_proof=proof_from_pb(m.knowledge_proof),
        signature=bytes(m.signature),
    )


def challenge_to_pb(
    c: SpotCheckChallenge, *, federation: str, round_: int, silo: str, wait: float = 0.0
) -> ppb.SpotCheckChallenge:
    """Dataclass -> wire."""
    return ppb.SpotCheckChallenge(
        federation=federation,
        round=round_,
        silo=silo,
        request_digest=c.request_digest,
        positions=list(c.positions),
        fold_seed=c.fold_seed,
        wait_seconds=wait,
    )


def challenge_from_pb(m: ppb.SpotCheckChallenge) -> SpotCheckChallenge:
    """Wire -> dataclass."""
    return SpotCheckChallenge(
        request_digest=bytes(m.request_digest),
        positions=tuple(int(p) for p in m.positions),
        fold_seed=bytes(m.fold_seed),
    )


def fold_requests_to_pb(digest: bytes, requests: Iterable[FoldRequest]) -> ppb.FoldRequests:
    """Dataclasses -> wire."""
    return ppb.FoldRequests(
        request_digest=digest,
        requests=[ppb.FoldRequest(decrypter=r.decrypter, seed=r.seed) for r in requests],
    )


def fold_requests_from_pb(m: ppb.FoldRequests) -> tuple[FoldRequest, ...]:
    """Wire -> dataclasses."""
    return tuple(FoldRequest(decrypter=r.decrypter, seed=bytes(r.seed)) for r in m.requests)


def fold_to_pb(a: FoldAnswer) -> ppb.FoldAnswer:
    """Dataclass -> wire."""
    return ppb.FoldAnswer(
        silo=a.silo_id,
        decrypter=a.decrypter,
        seed=a.seed,
        fold=int_to_bytes(a.fold),
        proof=proof_to_pb(a.proof),
        signature=a.signature,
    )


def fold_from_pb(m: ppb.FoldAnswer) -> FoldAnswer:
    """Wire -> dataclass.

    Raises:
        InvalidInput: an unknown proof form.
    """
    return FoldAnswer(
        silo_id=m.silo,
        decrypter=m.decrypter,
        seed=bytes(m.seed),
        fold=_int(m.fold),
        proof=proof_from_pb(m.proof),
        signature=bytes(m.signature),
    )


def request_to_pb(
    request: DecryptionRequest, *, width: int, per_part: int
) -> Iterator[ppb.DecryptionRequestPart]:
    """Split a decryption request into parts of at most ``per_part`` ciphertexts."""
    total = len(request.aggregate) // width
    step = per_part * width
    for offset in range(0, max(len(request.aggregate), 1), step):
        part = ppb.DecryptionRequestPart(
            offset=offset // width,
            aggregate=request.aggregate[offset : offset + step],
            last=offset + step >= len(request.aggregate),
        )
        if offset == 0:
            part.context = request.context
            part.ciphertext_count = total
            part.contributions.extend(commitment_to_pb(c) for c in request.contributions)
        yield part


def request_from_pb(parts: Iterable[ppb.DecryptionRequestPart], *, width: int) -> DecryptionRequest:
    """Reassemble a streamed decryption request.

    Raises:
        InvalidInput: missing, repeated or out-of-order parts.
    """
    context = b""
    contributions: tuple[SignedCommitment, ...] = ()
    total = -1
    data: list[bytes] = []
    received = 0
    for i, part in enumerate(parts):
        if i == 0:
            context = bytes(part.context)
            contributions = tuple(commitment_from_pb(c) for c in part.contributions)
            total = int(part.ciphertext_count)
        if int(part.offset) != received:
            raise InvalidInput("decryption request parts out of order")
        data.append(bytes(part.aggregate))
        received += len(part.aggregate) // width
        if part.last:
            break
    else:
        raise InvalidInput("decryption request ended without its last part")
    aggregate = b"".join(data)
    if total < 0 or len(aggregate) != total * width:
        raise InvalidInput("decryption request has the wrong length")
    return DecryptionRequest(context=context, aggregate=aggregate, contributions=contributions)


def openings_to_pb(response: SpotCheckResponse, *, budget: int) -> Iterator[ppb.SpotCheckOpenings]:
    """Split spot-check openings into messages of at most about ``budget`` bytes."""
    batch: list[ppb.SpotCheckOpening] = []
    size = 0
    for o in response.openings:
        message = ppb.SpotCheckOpening(
            silo=o.silo_id, position=o.position, ciphertext=o.ciphertext, proof=list(o.proof)
        )
        cost = message.ByteSize() + 16
        if batch and size + cost > budget:
            yield ppb.SpotCheckOpenings(request_digest=response.request_digest, openings=batch)
            batch, size = [], 0
        batch.append(message)
        size += cost
    yield ppb.SpotCheckOpenings(
        request_digest=response.request_digest,
        openings=batch,
        last=True,
        folds=[fold_to_pb(a) for a in response.folds],
    )


def openings_from_pb(parts: Iterable[ppb.SpotCheckOpenings]) -> SpotCheckResponse:
    """Reassemble streamed openings.

    Raises:
        InvalidInput: the stream ended without its last part or mixes requests.
    """
    digest: bytes | None = None
    openings: list[SpotCheckOpening] = []
    for part in parts:
        if digest is None:
            digest = bytes(part.request_digest)
        elif bytes(part.request_digest) != digest:
            raise InvalidInput("spot-check openings for two requests")
        openings.extend(
            SpotCheckOpening(
                silo_id=o.silo,
                position=int(o.position),
                ciphertext=bytes(o.ciphertext),
                proof=tuple(bytes(h) for h in o.proof),
            )
            for o in part.openings
        )
        if part.last:
            folds = tuple(fold_from_pb(a) for a in part.folds)
            return SpotCheckResponse(request_digest=digest, openings=tuple(openings), folds=folds)
    raise InvalidInput("spot-check openings ended without their last part")


def partial_to_pb(
    message: PartialDecryptionMessage,
    *,
    federation: str,
    round_: int,
    width: int,
    per_part: int,
) -> Iterator[ppb.PartialDecryptionPart]:
    """Split a partial decryption into parts of at most ``per_part`` values."""
    values = message.partial.values
    for start in range(0, max(len(values), 1), per_part):
        chunk = values[start : start + per_part]
        part = ppb.PartialDecryptionPart(
            federation=federation,
            round=round_,
            silo=message.silo_id,
            offset=start,
            values=b"".join(int(v).to_bytes(width, "big") for v in chunk),
            last=start + per_part >= len(values),
        )
        if start == 0:
            part.request_digest = message.request_digest
            part.index = message.partial.index
            part.challenge = int_to_bytes(message.partial.challenge)
            part.response = int_to_bytes(message.partial.response)
        yield part


def partial_from_pb(
    first: ppb.PartialDecryptionPart,
    rest: Iterator[ppb.PartialDecryptionPart],
    *,
    width: int,
    limit: int,
) -> PartialDecryptionMessage:
    """Reassemble a streamed partial decryption (``first`` already read), at most ``limit`` values.

    Raises:
        InvalidInput: parts out of order, for another silo or round, too long, or no last part.
    """
    values: list[int] = []
    part: ppb.PartialDecryptionPart | None = first
    while part is not None:
        if (part.silo, part.round, part.federation) != (first.silo, first.round, first.federation):
            raise InvalidInput("every part must name the same silo, round and federation")
        if int(part.offset) != len(values) or len(part.values) % width:
            raise InvalidInput("partial decryption parts out of order or malformed")
        data = bytes(part.values)
        values.extend(
            int.from_bytes(data[i : i + width], "big") for i in range(0, len(data), width)
        )
        if len(values) > limit:
            raise InvalidInput("the partial decryption is too long")
        if part.last:
            if next(rest, None) is not None:
                raise InvalidInput("parts after the last one")
            break
        part = next(rest, None)
    else:
        raise InvalidInput("partial decryption ended without its last part")
    return PartialDecryptionMessage(
        silo_id=first.silo,
        request_digest=bytes(first.request_digest),
        partial=PartialDecryption(
            index=int(first.index),
            values=tuple(values),
            challenge=int.from_bytes(first.challenge, "big"),
            response=int.from_bytes(first.response, "big"),
        ),
    )
