"""The coordinator's role in Paillier mode: stream-multiply and fold-check contributions, relay challenges and
folds, open spot checks, combine partials."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gmpy2
import numpy as np
import numpy.typing as npt
from gmpy2 import mpz

from secagg.errors import ProtocolError, ProtocolViolation, RoundAborted
from secagg.hazmat.merkle import CompactRange, MerkleTree, leaf_hash
from secagg.hazmat.paillier import (
    FOLD_SEED_BYTES,
    ThresholdPublicKey,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    combine_partial_decryptions,
    fold_ciphertexts,
)
from secagg.paillier.config import PaillierRoundConfig
from secagg.paillier.messages import (
    CiphertextChunk,
    DecryptionRequest,
    FoldAnswer,
    FoldRequest,
    PartialDecryptionMessage,
    SignedCommitment,
    SpotCheckChallenge,
    SpotCheckOpening,
    SpotCheckResponse,
    knowledge_weights,
    proof_context,
)

__all__ = [
    "AggregatorStage",
    "ContributionStore",
    "InMemoryContributionStore",
    "PaillierAggregator",
    "combine_partials",
]


class ContributionStore(Protocol):
    """Where the aggregator keeps each silo's ciphertext chunks for spot checks (disk in the coordinator)."""

    def append(self, silo_id: str, chunk_index: int, data: bytes) -> None:
        """Store chunk ``chunk_index`` of ``silo_id`` (chunks arrive in order)."""

    def chunks(self, silo_id: str) -> Iterator[bytes]:
        """The stored chunks of ``silo_id`` in order."""

    def discard(self, silo_id: str) -> None:
        """Forget everything stored for ``silo_id``."""


class InMemoryContributionStore:
    """A :class:`ContributionStore` in memory (tests; the coordinator provides a disk-backed one)."""

    def __init__(self) -> None:
        self._chunks: dict[str, list[bytes]] = {}

    def append(self, silo_id: str, chunk_index: int, data: bytes) -> None:
        """Store one chunk."""
        chunks = self._chunks.setdefault(silo_id, [])
        if chunk_index != len(chunks):
            raise ProtocolError("chunks must be stored in order")
        chunks.append(data)

    def chunks(self, silo_id: str) -> Iterator[bytes]:
        """Stored chunks in order."""
        return iter(list(self._chunks.get(silo_id, [])))

    def discard(self, silo_id: str) -> None:
        """Forget a silo's chunks."""
        self._chunks.pop(silo_id, None)


class AggregatorStage(enum.StrEnum):
    """Stages of :class:`PaillierAggregator`."""

    COLLECTING = "collecting"
    DECRYPTING = "decrypting"
    DONE = "done"


@dataclass
class _InFlight:
    commitment: SignedCommitment
    weights: list[int]
    next_chunk: int = 0
    received: int = 0
    fold: Any = 1
    merkle: CompactRange = field(default_factory=CompactRange)


class PaillierAggregator:
    """The coordinator's role: stream-multiply contributions, request and combine partial decryptions.

    Args:
        public_key: the joint public key.
        config: the round configuration.
        roster: silo id -> Ed25519 public key.
        store: where per-silo ciphertexts are kept for spot checks.
        workers: worker processes for verifying and combining partial decryptions; ``None`` (default) uses
            every core.

    Notes:
        The running aggregate is one ciphertext per position (memory grows with the vector, not the number of
        silos); sums are never re-obfuscated, since the product of fresh ciphertexts is already uniformly
        randomised. A contribution enters the aggregate chunk by chunk and is divided back out (inverses of its
        stored ciphertexts) if it turns out incomplete or inconsistent with its signed commitment.

        Each contribution carries a proof of plaintext knowledge of its fold with weights fixed by its signed
        Merkle root; the aggregator folds the chunks as they arrive and refuses a contribution whose
        ciphertexts are not the ones proven (a silo that submits another silo's ciphertexts, re-randomised or
        inverted, cannot prove it; :mod:`secagg.paillier`). Decrypters do not rely on this check: they verify
        the folds the contributors sign for their own seeds (:meth:`record_challenge`, :meth:`accept_folds`).
    """

    def __init__(
        self,
        *,
        public_key: ThresholdPublicKey,
        config: PaillierRoundConfig,
        roster: Mapping[str, bytes],
        store: ContributionStore | None = None,
        workers: int | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError("workers must be >= 1")
        self._workers = workers
        self._public_key = public_key
        self._config = config
        self._roster = dict(roster)
        self._store: ContributionStore = store if store is not None else InMemoryContributionStore()
        self._context = config.context(public_key)
        self._count = config.ciphertext_count(public_key)
        self._nsq = mpz(public_key.nsquare)
        self._aggregate: list[Any] = [mpz(1)] * self._count
        self._in_flight: dict[str, _InFlight] = {}
        self._complete: dict[str, SignedCommitment] = {}
        self._refused: set[str] = set()
        self._request: DecryptionRequest | None = None
        self._challenges: dict[str, SpotCheckChallenge] = {}
        self._folds: dict[str, dict[str, FoldAnswer]] = {}  # contributor -> decrypter -> answer
        self.stage = AggregatorStage.COLLECTING

    def __repr__(self) -> str:
        return f"PaillierAggregator(stage={self.stage.value!r}, contributors={len(self._complete)})"

    def _require(self, stage: AggregatorStage) -> None:
        if self.stage is not stage:
            raise ProtocolError(f"aggregator is in stage {self.stage.value}, not {stage.value}")

    @property
    def contributors(self) -> tuple[str, ...]:
        """Silo ids whose complete, verified contribution is in the aggregate."""
        return tuple(sorted(self._complete))

    def accept_commitment(self, commitment: SignedCommitment) -> None:
        """Start a silo's contribution with its signed commitment.

        Raises:
            ProtocolViolation: forged or mis-bound commitment, or a silo contributing twice.
        """
        self._require(AggregatorStage.COLLECTING)
        silo = commitment.silo_id
        if silo in self._complete or silo in self._in_flight or silo in self._refused:
            raise ProtocolViolation("silo already contributed to this round")
        commitment.verify(
            self._roster,
            public_key=self._public_key,
            context=self._context,
            vector_length=self._config.vector_length,
            ciphertext_count=self._count,
        )
        if any(c.merkle_root == commitment.merkle_root for c in self._complete.values()):
            raise ProtocolViolation("duplicate of another silo's contribution")
        weights = knowledge_weights(self._context, silo, commitment.merkle_root, self._count)
        self._in_flight[silo] = _InFlight(commitment=commitment, weights=weights)

    def accept_chunk(self, chunk: CiphertextChunk) -> None:
        """Multiply one chunk into the running aggregate; the last chunk completes the contribution.

        Raises:
            ProtocolError: no commitment yet, out-of-order or malformed chunk (the contribution is dropped).
            ProtocolViolation: the completed vector does not match the signed Merkle root (dropped).
        """
        self._require(AggregatorStage.COLLECTING)
        state = self._in_flight.get(chunk.silo_id)
        if state is None:
            raise ProtocolError("chunk from a silo without an open contribution")
        if chunk.chunk_index != state.next_chunk:
            self._drop(chunk.silo_id)
            raise ProtocolError("chunk out of order; contribution dropped")
        start = chunk.chunk_index * self._config.chunk_ciphertexts
        expected = min(self._config.chunk_ciphertexts, self._count - start)
        try:
            if len(chunk.data) != expected * self._public_key.ciphertext_bytes:
                raise ValueError("chunk has the wrong size")
            ciphertexts = ciphertexts_from_bytes(self._public_key, chunk.data)
        except ValueError as exc:
            self._drop(chunk.silo_id)
            raise ProtocolError("malformed ciphertext chunk; contribution dropped") from exc
        self._store.append(chunk.silo_id, chunk.chunk_index, chunk.data)
        width = self._public_key.ciphertext_bytes
        for k, c in enumerate(ciphertexts):
            state.merkle.append(leaf_hash(chunk.data[k * width : (k + 1) * width]))
            self._aggregate[start + k] = self._aggregate[start + k] * c % self._nsq
        weights = state.weights[start : start + len(ciphertexts)]
        state.fold = (
            state.fold * fold_ciphertexts(self._public_key, ciphertexts, weights) % self._nsq
        )
        state.next_chunk += 1
        state.received += len(ciphertexts)
        if state.received == self._count:
            if state.merkle.root() != state.commitment.merkle_root:
                self._drop(chunk.silo_id)
                raise ProtocolViolation(
                    "ciphertexts do not match the signed commitment; contribution dropped"
                )
            if state.fold != state.commitment.knowledge_fold:
                self._drop(chunk.silo_id)
                raise ProtocolViolation(
                    "ciphertexts are not those the proof of plaintext knowledge covers; "
                    "contribution dropped"
                )
            del self._in_flight[chunk.silo_id]
            self._complete[chunk.silo_id] = state.commitment

    def _drop(self, silo_id: str) -> None:
        """Divide a partial or bad contribution back out of the aggregate and forget it."""
        state = self._in_flight.pop(silo_id, None)
        if state is not None and state.received:
            position = 0
            for data in self._store.chunks(silo_id):
                for c in ciphertexts_from_bytes(self._public_key, data):
                    self._aggregate[position] = (
                        self._aggregate[position] * gmpy2.invert(c, self._nsq) % self._nsq
                    )
                    position += 1
        self._store.discard(silo_id)
        self._refused.add(silo_id)

    def decryption_request(self) -> DecryptionRequest:
        """Close collection and build the request (incomplete contributions are dropped first).

        Raises:
            RoundAborted: fewer than ``min_cohort`` complete contributions.
        """
        self._require(AggregatorStage.COLLECTING)
        for silo in list(self._in_flight):
            self._drop(silo)
        if len(self._complete) < self._config.min_cohort:
            raise RoundAborted(
                f"{len(self._complete)} contributions, min_cohort is {self._config.min_cohort}"
            )
        self._request = DecryptionRequest(
            context=self._context,
            aggregate=ciphertexts_to_bytes(self._public_key, self._aggregate),
            contributions=tuple(self._complete[s] for s in sorted(self._complete)),
        )
        self.stage = AggregatorStage.DECRYPTING
        return self._request

    @property
    def request(self) -> DecryptionRequest:
        """The decryption request in progress.

        Raises:
            ProtocolError: before :meth:`decryption_request` or after :meth:`finish`.
        """
        self._require(AggregatorStage.DECRYPTING)
        if self._request is None:  # unreachable after _require; keeps mypy honest
            raise ProtocolError("no request in progress")
        return self._request

    def record_challenge(self, decrypter: str, challenge: SpotCheckChallenge) -> None:
        """Keep a key holder's challenge: its positions are opened and its fold seed forwarded to contributors.

        Raises:
            ProtocolError: wrong stage, another request, positions out of range, a malformed seed, or a second,
                different challenge from the same decrypter.
        """
        request = self.request
        if decrypter not in self._roster:
            raise ProtocolError("challenge from a silo outside the roster")
        if challenge.request_digest != request.digest():
            raise ProtocolError("challenge for another request")
        positions = sorted(set(challenge.positions))
        if not positions or positions[0] < 0 or positions[-1] >= self._count:
            raise ProtocolError("challenge positions out of range")
        if len(challenge.fold_seed) != FOLD_SEED_BYTES:
            raise ProtocolError("malformed fold seed")
        if self._challenges.setdefault(decrypter, challenge) != challenge:
            raise ProtocolError("this decrypter already challenged the request")

    def fold_requests(self) -> tuple[FoldRequest, ...]:
        """The recorded challenges' seeds, for every contributor to fold with.

        Raises:
            ProtocolError: no request in progress.
        """
        self._require(AggregatorStage.DECRYPTING)
        return tuple(FoldRequest(d, c.fold_seed) for d, c in sorted(self._challenges.items()))

    def accept_folds(self, contributor: str, answers: Sequence[FoldAnswer]) -> None:
        """Keep a contributor's signed folds, one per recorded challenge (checked: signature and proof).

        Checking a fold against the stored ciphertexts would cost a multi-exponentiation per pair; decrypters
        do the check that matters (the product of the folds against the aggregate's own fold).

        Raises:
            ProtocolViolation: not a contributor, a second, different answer for a decrypter, or an answer
                that does not verify.
        """
        request = self.request
        commitments = {c.silo_id: c for c in request.contributions}
        commitment = commitments.get(contributor)
        if commitment is None:
            raise ProtocolViolation("folds from a silo outside the request")
        wanted = {r.decrypter: r for r in self.fold_requests()}
        held = self._folds.get(contributor, {})
        kept: dict[str, FoldAnswer] = {}
        for answer in answers:
            fold_request = wanted.get(answer.decrypter)
            if fold_request is None or answer.decrypter in kept:
                raise ProtocolViolation("fold for a decrypter that did not challenge, or twice")
            if held.get(answer.decrypter, answer) != answer:
                raise ProtocolViolation("a second, different fold for the same decrypter")
            answer.verify(
                self._roster,
                public_key=self._public_key,
                context=self._context,
                commitment=commitment,
                request=fold_request,
            )
            kept[answer.decrypter] = answer
        self._folds[contributor] = held | kept

    @property
    def folded(self) -> tuple[str, ...]:
        """Contributors whose folds are in."""
        return tuple(sorted(self._folds))

    def open_spot_checks(self, challenge: SpotCheckChallenge) -> SpotCheckResponse:
        """Open every contributor's ciphertext at the challenged positions, with inclusion proofs, and hand
        over every contributor's fold for the challenge's seed.

        Raises:
            ProtocolError: wrong stage, another request, or positions out of range.
        """
        request = self.request
        if challenge.request_digest != request.digest():
            raise ProtocolError("challenge for another request")
        positions = sorted(set(challenge.positions))
        if not positions or positions[0] < 0 or positions[-1] >= self._count:
            raise ProtocolError("challenge positions out of range")
        width = self._public_key.ciphertext_bytes
        openings: list[SpotCheckOpening] = []
        for silo in sorted(self._complete):
            data = b"".join(self._store.chunks(silo))
            tree = MerkleTree(
                leaf_hash(data[k * width : (k + 1) * width]) for k in range(self._count)
            )
            for position in positions:
                openings.append(
                    SpotCheckOpening(
                        silo_id=silo,
                        position=position,
                        ciphertext=data[position * width : (position + 1) * width],
                        proof=tuple(tree.inclusion_proof(position)),
                    )
                )
        folds = tuple(
            answer
            for silo in sorted(self._folds)
            for answer in self._folds[silo].values()
            if answer.seed == challenge.fold_seed
        )
        return SpotCheckResponse(
            request_digest=challenge.request_digest, openings=tuple(openings), folds=folds
        )

    def finish(self, partials: Sequence[PartialDecryptionMessage]) -> npt.NDArray[np.int64]:
        """Combine any ``t`` valid partial decryptions into the exact integer sum vector.

        Raises:
            RoundAborted: fewer than ``t`` valid partial decryptions for this request.
        """
        request = self.request
        result = combine_partials(
            self._public_key, self._config, request, partials, workers=self._workers
        )
        self.stage = AggregatorStage.DONE
        return result


def combine_partials(
    public_key: ThresholdPublicKey,
    config: PaillierRoundConfig,
    request: DecryptionRequest,
    partials: Sequence[PartialDecryptionMessage],
    *,
    workers: int | None = None,
) -> npt.NDArray[np.int64]:
    """The combiner: verify partial decryptions of ``request``, combine ``t`` of them, unpack the sum.

    Partial decryptions for another request are ignored; invalid proofs are refused and never combined. Proofs
    are batch-verified and the combination runs on ``workers`` processes (``None``: every core).

    Raises:
        RoundAborted: fewer than ``t`` valid partial decryptions.
    """
    digest = request.digest()
    aggregate = ciphertexts_from_bytes(public_key, request.aggregate)
    relevant = [m.partial for m in partials if m.request_digest == digest]
    plaintexts = combine_partial_decryptions(
        public_key,
        aggregate,
        relevant,
        context=proof_context(request.context, digest),
        workers=workers,
    )
    return config.packing(public_key).unpack_sum(
        plaintexts, length=config.vector_length, contributors=len(request.contributions)
    )
