"""A key holder's role in Paillier mode: check the whole aggregate against signed folds, then partially decrypt.

Notes:
    Whole-aggregate integrity. After the request is fixed the decrypter draws a fresh 32-byte fold seed;
    every contributor returns, signed, the fold ``F_s = prod_j c_sj^(w_j)`` of its own ciphertexts with the
    seed's 128-bit weights and a proof that it knows ``F_s``'s plaintext. The decrypter checks each
    signature and proof and that ``prod_s F_s`` equals the fold of the aggregate it is asked to decrypt. A
    coordinator that changed any position of the aggregate (the swap of one silo's ciphertext into it, or of
    many) passes with probability at most 2^-128 (:mod:`secagg.hazmat.paillier.knowledge`); a colluding
    contributor can sign any fold it likes, but only one whose plaintext it knows, so its effective
    contribution cannot be another silo's ciphertexts inverted or re-randomised. This is what the guarantee
    rests on; the spot checks below remain as a cheap first filter.

    Spot checks:
    Why decrypter-chosen positions rather than Fiat-Shamir from the request hash: a coordinator that tampers
    with a fraction f of the positions passes k hashed positions with probability (1 - f)^k per attempt, and
    with Fiat-Shamir it could re-randomise the request (contributor order, a re-encrypted aggregate) offline
    until the hash avoids its tampered positions; with private positions it gets no retries: each of the
    ``t`` decrypters checks independent positions, the request is fixed before they are drawn, and a
    decrypter never decrypts a second aggregate for the same round (:class:`DecryptionHistory`). Tampering
    with every position (the single-silo oracle) is caught with certainty.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from typing import Protocol

from gmpy2 import mpz

from secagg.errors import InvalidMerkleProof, ProtocolError, ProtocolViolation
from secagg.hazmat.keys import RandomSource
from secagg.hazmat.merkle import leaf_hash, verify_inclusion
from secagg.hazmat.paillier import (
    FOLD_SEED_BYTES,
    KeyShare,
    ThresholdPublicKey,
    check_key_share,
    ciphertexts_from_bytes,
    fold_ciphertexts,
    fold_weights,
    partial_decrypt,
)
from secagg.hazmat.random import randbelow
from secagg.paillier.config import PaillierRoundConfig
from secagg.paillier.messages import (
    DecryptionRequest,
    FoldRequest,
    PartialDecryptionMessage,
    SpotCheckChallenge,
    SpotCheckOpening,
    SpotCheckResponse,
    proof_context,
)

__all__ = [
    "DecrypterStage",
    "DecryptionHistory",
    "InMemoryDecryptionHistory",
    "PartialDecrypter",
]


class DecryptionHistory(Protocol):
    """The one request a key holder agreed to consider per round context (persisted by the silo)."""

    def bind(
        self, context: bytes, request_digest: bytes, positions: tuple[int, ...]
    ) -> tuple[int, ...]:
        """Bind ``context`` to ``request_digest`` and return the spot-check positions for it.

        The first call for a context stores ``positions`` and returns them; a repeat of the same request
        returns the stored positions (so a coordinator cannot fish for new ones).

        Raises:
            ProtocolViolation: a different request was already bound to ``context``.
        """


class InMemoryDecryptionHistory:
    """A :class:`DecryptionHistory` in memory (tests; the silo persists it in production)."""

    def __init__(self) -> None:
        self._bound: dict[bytes, tuple[bytes, tuple[int, ...]]] = {}

    def bind(
        self, context: bytes, request_digest: bytes, positions: tuple[int, ...]
    ) -> tuple[int, ...]:
        """Bind, refusing a second, different request for the same context."""
        digest, stored = self._bound.setdefault(context, (request_digest, positions))
        if digest != request_digest:
            raise ProtocolViolation("a different aggregate was already presented for this round")
        return stored


class DecrypterStage(enum.StrEnum):
    """Stages of :class:`PartialDecrypter`."""

    AWAITING_REQUEST = "awaiting-request"
    AWAITING_OPENINGS = "awaiting-openings"
    DONE = "done"


class PartialDecrypter:
    """A key holder's decryption side for one round.

    Args:
        silo_id: this silo's id.
        share: this silo's key share.
        public_key: the joint public key.
        config: the round configuration.
        roster: silo id -> Ed25519 public key.
        history: decryptions already made (shared across rounds).
        rng: randomness for spot-check positions and the proof.
        workers: worker processes for the partial decryption; ``None`` (default) uses every core
            (``os.cpu_count()``), 1 computes in this process.

    Raises:
        InvalidParameters: the share is not one of ``public_key``'s (fingerprint, index or verification key).
    """

    def __init__(
        self,
        *,
        silo_id: str,
        share: KeyShare,
        public_key: ThresholdPublicKey,
        config: PaillierRoundConfig,
        roster: Mapping[str, bytes],
        history: DecryptionHistory,
        rng: RandomSource = os.urandom,
        workers: int | None = None,
    ) -> None:
        check_key_share(public_key, share)
        if workers is not None and workers < 1:
            raise ValueError("workers must be >= 1")
        self.silo_id = silo_id
        self._share = share
        self._public_key = public_key
        self._config = config
        self._roster = dict(roster)
        self._history = history
        self._rng = rng
        self._workers = workers
        self._context = config.context(public_key)
        self._count = config.ciphertext_count(public_key)
        self._request: DecryptionRequest | None = None
        self._aggregate: list[int] = []
        self._challenge: SpotCheckChallenge | None = None
        self.stage = DecrypterStage.AWAITING_REQUEST

    def __repr__(self) -> str:
        return f"PartialDecrypter(silo_id={self.silo_id!r}, stage={self.stage.value!r})"

    def _require(self, stage: DecrypterStage) -> None:
        if self.stage is not stage:
            raise ProtocolError(f"decrypter is in stage {self.stage.value}, not {stage.value}")

    def challenge(self, request: DecryptionRequest) -> SpotCheckChallenge:
        """Check the request's commitments and draw the positions to spot-check.

        Raises:
            ProtocolViolation: other context, fewer than ``min_cohort`` distinct roster-signed commitments,
                a forged or duplicated commitment, a malformed aggregate, or a different request already
                presented for this round (see :class:`DecryptionHistory`).
        """
        self._require(DecrypterStage.AWAITING_REQUEST)
        if request.context != self._context:
            raise ProtocolViolation("decryption request for another round, key or federation")
        contributions = request.contributions
        silos = [c.silo_id for c in contributions]
        if len(set(silos)) != len(silos):
            raise ProtocolViolation("a silo appears twice among the contributors")
        if len(contributions) < self._config.min_cohort:
            raise ProtocolViolation(
                f"aggregate of {len(contributions)} contributions, min_cohort is {self._config.min_cohort}"
            )
        if len(contributions) > self._config.max_contributors:
            raise ProtocolViolation("more contributors than the slots were sized for")
        for commitment in contributions:
            commitment.verify(
                self._roster,
                public_key=self._public_key,
                context=self._context,
                vector_length=self._config.vector_length,
                ciphertext_count=self._count,
            )
        if len({self._roster.get(s) for s in silos}) != len(silos):
            raise ProtocolViolation("two contributors share a roster key")
        if len({c.merkle_root for c in contributions}) != len(contributions):
            raise ProtocolViolation("two contributors committed to the same ciphertexts")
        try:
            aggregate = ciphertexts_from_bytes(self._public_key, request.aggregate)
        except ValueError as exc:
            raise ProtocolViolation("malformed aggregate") from exc
        if len(aggregate) != self._count:
            raise ProtocolViolation("aggregate has the wrong length")
        k = min(self._config.spot_checks, self._count)
        drawn: set[int] = set()
        while len(drawn) < k:
            drawn.add(randbelow(self._rng, self._count))
        digest = request.digest()
        positions = self._history.bind(self._context, digest, tuple(sorted(drawn)))
        # drawn after the request is bound: the coordinator learns the weights only once it cannot change it
        seed = self._rng(FOLD_SEED_BYTES)
        self._request = request
        self._aggregate = aggregate
        self._challenge = SpotCheckChallenge(
            request_digest=digest, positions=positions, fold_seed=seed
        )
        self.stage = DecrypterStage.AWAITING_OPENINGS
        return self._challenge

    def partially_decrypt(self, response: SpotCheckResponse) -> PartialDecryptionMessage:
        """Verify the openings and the folds, then partially decrypt the aggregate with a proof.

        Raises:
            ProtocolViolation: a missing or extra opening, a bad inclusion proof, or a product of contributions
                that differs from the aggregate at a checked position; a missing, unsigned or unproven fold,
                or folds whose product is not the aggregate's fold.
        """
        self._require(DecrypterStage.AWAITING_OPENINGS)
        if (
            self._request is None or self._challenge is None
        ):  # unreachable after _require; keeps mypy honest
            raise ProtocolError("no request in progress")
        digest = self._challenge.request_digest
        if response.request_digest != digest:
            raise ProtocolViolation("openings for another request")
        roots = {c.silo_id: c.merkle_root for c in self._request.contributions}
        wanted = {(s, p) for s in roots for p in self._challenge.positions}
        openings: dict[tuple[str, int], SpotCheckOpening] = {}
        for opening in response.openings:
            key = (opening.silo_id, opening.position)
            if key not in wanted or key in openings:
                raise ProtocolViolation("unexpected or repeated opening")
            openings[key] = opening
        if set(openings) != wanted:
            raise ProtocolViolation("missing openings")
        nsq = mpz(self._public_key.nsquare)
        for position in self._challenge.positions:
            product = mpz(1)
            for silo, root in roots.items():
                opening = openings[(silo, position)]
                if len(opening.ciphertext) != self._public_key.ciphertext_bytes:
                    raise ProtocolViolation("opened ciphertext has the wrong size")
                try:
                    verify_inclusion(
                        leaf_hash(opening.ciphertext), position, self._count, opening.proof, root
                    )
                except InvalidMerkleProof as exc:
                    raise ProtocolViolation(
                        "inclusion proof does not match the signed commitment"
                    ) from exc
                try:
                    (value,) = ciphertexts_from_bytes(self._public_key, opening.ciphertext)
                except ValueError as exc:
                    raise ProtocolViolation("opened ciphertext outside Z*_{N^2}") from exc
                product = product * value % nsq
            if product != self._aggregate[position]:
                raise ProtocolViolation("aggregate is not the product of the signed contributions")
        self._check_folds(self._request, self._challenge.fold_seed, response)
        partial = partial_decrypt(
            self._public_key,
            self._share,
            self._aggregate,
            context=proof_context(self._context, digest),
            rng=self._rng,
            workers=self._workers,
        )
        self.stage = DecrypterStage.DONE
        return PartialDecryptionMessage(
            silo_id=self.silo_id, request_digest=digest, partial=partial
        )

    def _check_folds(
        self, request: DecryptionRequest, seed: bytes, response: SpotCheckResponse
    ) -> None:
        """Every contributor's signed, proven fold for this decrypter's seed; their product = the aggregate's."""
        fold_request = FoldRequest(decrypter=self.silo_id, seed=seed)
        commitments = {c.silo_id: c for c in request.contributions}
        answers = {a.silo_id: a for a in response.folds}
        if len(answers) != len(response.folds) or set(answers) != set(commitments):
            raise ProtocolViolation("missing, extra or repeated folds")
        nsq = mpz(self._public_key.nsquare)
        product = mpz(1)
        for silo, commitment in commitments.items():
            answers[silo].verify(
                self._roster,
                public_key=self._public_key,
                context=self._context,
                commitment=commitment,
                request=fold_request,
            )
            product = product * answers[silo].fold % nsq
        weights = fold_weights(seed, self._count)
        expected = fold_ciphertexts(
            self._public_key, self._aggregate, weights, workers=self._workers
        )
        if product != expected:
            raise ProtocolViolation(
                "aggregate is not the product of the signed contributions (whole-vector fold)"
            )
