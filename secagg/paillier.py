"""Paillier mode: key ceremony, silo encryption, streaming aggregation, guarded partial decryption, combination.

The roles are explicit stage machines (DESIGN 5, STYLE rule 7):

- :func:`run_key_ceremony` (trusted dealer, run by the consortium at setup) -> public key + sealed shares;
- :class:`PaillierContributor` (silo): ``encrypt_update`` -> ciphertext chunks + a signed Merkle commitment;
- :class:`PaillierAggregator` (coordinator): multiplies chunks into a running aggregate as they arrive, builds
  the :class:`DecryptionRequest`, answers spot-check challenges, combines partial decryptions;
- :class:`PartialDecrypter` (silo): checks that the aggregate is the product of >= ``min_cohort`` roster-signed
  contributions at positions IT chooses, then partially decrypts it once per round.

Notes:
    - Decryption-oracle defence (DESIGN 5). A malicious coordinator could ask the key holders to decrypt one
      silo's ciphertext disguised as the aggregate. Every contribution is committed to by a Merkle root (RFC 6962
      hashing, leaf = H(0x00 || ciphertext), node = H(0x01 || left || right)) signed with the silo's roster key
      and bound to (federation, round, session id, key fingerprint, vector length, silo id). A decrypter refuses
      unless it sees >= ``min_cohort`` distinct roster-signed commitments for this context and, at ``spot_checks``
      positions it draws with its OWN randomness after the request is fixed, every contributor's ciphertext
      opens against its signed root and their product equals the aggregate.
    - Why decrypter-chosen positions rather than Fiat-Shamir from the request hash: a coordinator that tampers
      with a fraction f of the positions passes k hashed positions with probability (1 - f)^k per attempt, and
      with Fiat-Shamir it could re-randomise the request (contributor order, a re-encrypted aggregate) offline
      until the hash avoids its tampered positions; with private positions it gets no retries: each of the
      ``t`` decrypters checks independent positions, the request is fixed before they are drawn, and a
      decrypter never decrypts a second aggregate for the same round (:class:`DecryptionHistory`). Tampering
      with every position (the single-silo oracle) is caught with certainty.
    - Spot-check openings show a decrypter other silos' individual ciphertexts at a few positions. They are
      still encrypted under the threshold key, so only a coalition of >= t key holders could read them, which
      is the trust assumption of Paillier mode anyway.
    - Out of scope (see threat model): silos colluding with the coordinator can submit signed ciphertexts that
      cancel honest contributions (e.g. a re-randomised inverse of another silo's ciphertext); stopping that
      needs per-silo zero-knowledge proofs of plaintext knowledge/range, which this module does not provide.
      Byte-identical duplicate contributions are refused.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import gmpy2
import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from gmpy2 import mpz

from secagg.errors import (
    InvalidParameters,
    InvalidSignature,
    ProtocolError,
    ProtocolViolation,
    RoundAborted,
)
from secagg.hazmat.keys import RandomSource, encode_fields, sign, verify
from secagg.hazmat.packing import SlotPacking
from secagg.hazmat.paillier import (
    DEFAULT_KEY_BITS,
    KeyShare,
    ObfuscatorPool,
    PartialDecryption,
    SealedShare,
    ThresholdPublicKey,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    combine_partial_decryptions,
    deal_threshold_key,
    encrypt_plaintexts,
    open_share,
    partial_decrypt,
    seal_share,
)

__all__ = [
    "DEFAULT_CHUNK_CIPHERTEXTS",
    "DEFAULT_SPOT_CHECKS",
    "AggregatorStage",
    "CiphertextChunk",
    "ContributionStore",
    "ContributorStage",
    "DecrypterStage",
    "DecryptionHistory",
    "DecryptionRequest",
    "InMemoryContributionStore",
    "InMemoryDecryptionHistory",
    "KeyCeremonyResult",
    "PaillierAggregator",
    "PaillierContributor",
    "PaillierRoundConfig",
    "PartialDecrypter",
    "PartialDecryptionMessage",
    "SignedCommitment",
    "SpotCheckChallenge",
    "SpotCheckOpening",
    "SpotCheckResponse",
    "ceremony_context",
    "combine_partials",
    "open_key_share",
    "run_key_ceremony",
]

DEFAULT_SPOT_CHECKS = 16
"""Positions each decrypter checks. Tampering with a fraction f of positions survives one decrypter with
probability (1 - f)^16 and t independent decrypters with (1 - f)^(16 t); the single-silo oracle (f = 1) never."""

DEFAULT_CHUNK_CIPHERTEXTS = 256
"""Ciphertexts per streamed chunk: 128 KiB at 2048-bit keys, well under gRPC's 4 MiB default."""

_LABEL = "secagg/paillier/v1"


# --------------------------------------------------------------------------------------------------------------
# RFC 6962 Merkle tree (tiny local helper)


def _leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """Largest power of two strictly smaller than ``size`` (RFC 6962 section 2.1)."""
    return 1 << ((size - 1).bit_length() - 1)


def _merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle Tree Hash over already-hashed leaves."""
    if not leaf_hashes:
        return hashlib.sha256(b"").digest()
    if len(leaf_hashes) == 1:
        return leaf_hashes[0]
    k = _split(len(leaf_hashes))
    return _node_hash(_merkle_root(leaf_hashes[:k]), _merkle_root(leaf_hashes[k:]))


def _inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 audit path PATH(index, D[n]), leaf-to-root order."""
    if len(leaf_hashes) <= 1:
        return []
    k = _split(len(leaf_hashes))
    if index < k:
        return [*_inclusion_proof(leaf_hashes[:k], index), _merkle_root(leaf_hashes[k:])]
    return [*_inclusion_proof(leaf_hashes[k:], index - k), _merkle_root(leaf_hashes[:k])]


def _verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 section 2.1.3.2. Raises :class:`ProtocolViolation` if the path does not lead to ``root``."""
    if not 0 <= index < size:
        raise ProtocolViolation("inclusion proof index out of range")
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise ProtocolViolation("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = _node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise ProtocolViolation("inclusion proof does not match the signed commitment")


class _MerkleStream:
    """Root of a tree fed leaf by leaf, in O(log n) memory (perfect subtrees, merged right to left)."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []
        self.size = 0

    def push(self, leaf_hash: bytes) -> None:
        self._stack.append((1, leaf_hash))
        self.size += 1
        while len(self._stack) >= 2 and self._stack[-1][0] == self._stack[-2][0]:
            (size, right), (_, left) = self._stack.pop(), self._stack.pop()
            self._stack.append((2 * size, _node_hash(left, right)))

    def root(self) -> bytes:
        if not self._stack:
            return hashlib.sha256(b"").digest()
        acc = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            acc = _node_hash(left, acc)
        return acc


# --------------------------------------------------------------------------------------------------------------
# Configuration and key ceremony


@dataclass(frozen=True, kw_only=True)
class PaillierRoundConfig:
    """Public parameters of one Paillier-mode round, validated on construction.

    Attributes:
        federation_id: the federation.
        round_number: the round (>= 0).
        session_id: the round's session id (>= 16 bytes), bound into every signature and proof.
        vector_length: number of quantized values per silo.
        value_bits: ``b``; values lie in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``.
        max_contributors: ``n``, sizes the slots (``b + ceil(log2 n)`` bits).
        min_cohort: minimum number of contributions in a decrypted aggregate (>= 2).
        spot_checks: positions each decrypter checks.
        chunk_ciphertexts: ciphertexts per streamed chunk.
    """

    federation_id: str
    round_number: int
    session_id: bytes
    vector_length: int
    value_bits: int
    max_contributors: int
    min_cohort: int
    spot_checks: int = DEFAULT_SPOT_CHECKS
    chunk_ciphertexts: int = DEFAULT_CHUNK_CIPHERTEXTS

    def __post_init__(self) -> None:
        if not self.federation_id:
            raise InvalidParameters("federation_id must not be empty")
        if self.round_number < 0:
            raise InvalidParameters("round_number must be >= 0")
        if len(self.session_id) < 16:
            raise InvalidParameters("session_id must be at least 16 bytes")
        if self.vector_length < 1:
            raise InvalidParameters("vector_length must be >= 1")
        if self.min_cohort < 2:
            raise InvalidParameters(
                "min_cohort must be >= 2: a sum over one silo is that silo's update"
            )
        if self.max_contributors < self.min_cohort:
            raise InvalidParameters("max_contributors must be >= min_cohort")
        if self.spot_checks < 1:
            raise InvalidParameters("spot_checks must be >= 1")
        if self.chunk_ciphertexts < 1:
            raise InvalidParameters("chunk_ciphertexts must be >= 1")

    def packing(self, public_key: ThresholdPublicKey) -> SlotPacking:
        """The slot layout for this round under ``public_key``."""
        return SlotPacking(
            value_bits=self.value_bits,
            max_contributors=self.max_contributors,
            modulus_bits=public_key.key_bits,
        )

    def ciphertext_count(self, public_key: ThresholdPublicKey) -> int:
        """Ciphertexts per silo."""
        return self.packing(public_key).plaintexts_for(self.vector_length)

    def context(self, public_key: ThresholdPublicKey) -> bytes:
        """32-byte digest binding every parameter of the round and the key."""
        return hashlib.sha256(
            encode_fields(
                f"{_LABEL}/round-context",
                self.federation_id,
                self.round_number,
                self.session_id,
                self.vector_length,
                self.value_bits,
                self.max_contributors,
                self.min_cohort,
                self.chunk_ciphertexts,
                public_key.fingerprint(),
            )
        ).digest()


@dataclass(frozen=True)
class KeyCeremonyResult:
    """Output of the trusted-dealer ceremony: public material only (shares are sealed).

    Attributes:
        public_key: the joint public key (for the coordinator and every silo).
        sealed_shares: silo id -> its share, sealed to the silo's X25519 key.
        indices: silo id -> share index (sorted silo ids get 1..l).
    """

    public_key: ThresholdPublicKey
    sealed_shares: Mapping[str, SealedShare]
    indices: Mapping[str, int]


def ceremony_context(federation_id: str, public_key: ThresholdPublicKey) -> bytes:
    """Binding for sealed shares: the federation and the key fingerprint."""
    return encode_fields(f"{_LABEL}/ceremony", federation_id, public_key.fingerprint())


def run_key_ceremony(
    *,
    federation_id: str,
    threshold: int,
    recipients: Mapping[str, bytes],
    key_bits: int = DEFAULT_KEY_BITS,
    rng: RandomSource = os.urandom,
    insecure_test_key_size: bool = False,
    primes: tuple[int, int] | None = None,
) -> KeyCeremonyResult:
    """Deal a t-of-l threshold Paillier key and seal each share to its silo.

    Args:
        federation_id: the federation the key belongs to.
        threshold: ``t``.
        recipients: silo id -> the silo's X25519 public key (32 bytes).
        key_bits: 2048 (default) or 3072.
        rng: randomness for everything the dealer draws.
        insecure_test_key_size: allow small keys (tests only).
        primes: reuse known safe primes (tests only).

    Raises:
        InvalidParameters: unsafe sizes or threshold.

    Notes:
        A trusted dealer sees every share; the ceremony must run on an offline machine that erases its memory
        afterwards (DESIGN 5: dealer-free generation is a later goal). Shares never leave the function
        unsealed.
    """
    if len(recipients) < 2:
        raise InvalidParameters("a threshold key needs at least two recipients")
    material = deal_threshold_key(
        threshold=threshold,
        parties=len(recipients),
        key_bits=key_bits,
        rng=rng,
        insecure_test_key_size=insecure_test_key_size,
        primes=primes,
    )
    context = ceremony_context(federation_id, material.public_key)
    indices = {silo: i for i, silo in enumerate(sorted(recipients), start=1)}
    sealed = {
        silo: seal_share(material.shares[i - 1], recipients[silo], context, rng=rng)
        for silo, i in indices.items()
    }
    return KeyCeremonyResult(public_key=material.public_key, sealed_shares=sealed, indices=indices)


def open_key_share(
    sealed: SealedShare,
    recipient_private: X25519PrivateKey,
    *,
    federation_id: str,
    public_key: ThresholdPublicKey,
) -> KeyShare:
    """Open this silo's sealed share. Raises :class:`~secagg.errors.DecryptionError` if it is not ours."""
    return open_share(
        sealed,
        recipient_private,
        ceremony_context(federation_id, public_key),
        public_key=public_key,
    )


# --------------------------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True)
class CiphertextChunk:
    """Consecutive ciphertexts of one silo's vector (``chunk_index * chunk_ciphertexts`` is the first position)."""

    silo_id: str
    chunk_index: int
    data: bytes

    def __repr__(self) -> str:
        return f"CiphertextChunk(silo_id={self.silo_id!r}, chunk_index={self.chunk_index}, bytes={len(self.data)})"


@dataclass(frozen=True)
class SignedCommitment:
    """A silo's signed Merkle root over its ciphertext vector, bound to the round context."""

    silo_id: str
    context: bytes
    vector_length: int
    ciphertext_count: int
    merkle_root: bytes
    signature: bytes

    def signed_message(self) -> bytes:
        """The exact bytes the silo signs."""
        return encode_fields(
            f"{_LABEL}/commitment",
            self.context,
            self.silo_id,
            self.vector_length,
            self.ciphertext_count,
            self.merkle_root,
        )

    def verify(
        self,
        roster: Mapping[str, bytes],
        *,
        context: bytes,
        vector_length: int,
        ciphertext_count: int,
    ) -> None:
        """Check the signature against the roster and the binding against the expected round.

        Raises:
            ProtocolViolation: unknown silo, other context, wrong dimensions, or a signature that does not verify.
        """
        public = roster.get(self.silo_id)
        if public is None:
            raise ProtocolViolation("commitment from a silo outside the roster")
        if self.context != context:
            raise ProtocolViolation("commitment is bound to another round, key or federation")
        if self.vector_length != vector_length or self.ciphertext_count != ciphertext_count:
            raise ProtocolViolation("commitment has the wrong vector length")
        try:
            verify(public, self.signature, self.signed_message())
        except InvalidSignature as exc:
            raise ProtocolViolation("commitment signature does not verify") from exc


@dataclass(frozen=True)
class DecryptionRequest:
    """What the coordinator asks key holders to partially decrypt: the aggregate and who is in it."""

    context: bytes
    aggregate: bytes
    contributions: tuple[SignedCommitment, ...]

    def __repr__(self) -> str:
        return f"DecryptionRequest(contributors={[c.silo_id for c in self.contributions]})"

    def digest(self) -> bytes:
        """SHA-256 over the whole request (the aggregate via its hash)."""
        return hashlib.sha256(
            encode_fields(
                f"{_LABEL}/decryption-request",
                self.context,
                hashlib.sha256(self.aggregate).digest(),
                *[c.signed_message() + c.signature for c in self.contributions],
            )
        ).digest()


@dataclass(frozen=True)
class SpotCheckChallenge:
    """Positions a decrypter wants opened, drawn with its own randomness after the request was fixed."""

    request_digest: bytes
    positions: tuple[int, ...]


@dataclass(frozen=True)
class SpotCheckOpening:
    """One contributor's ciphertext at one position with its RFC 6962 inclusion proof."""

    silo_id: str
    position: int
    ciphertext: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class SpotCheckResponse:
    """The coordinator's openings for a :class:`SpotCheckChallenge`."""

    request_digest: bytes
    openings: tuple[SpotCheckOpening, ...]


@dataclass(frozen=True)
class PartialDecryptionMessage:
    """A key holder's verified-proof partial decryption of one request's aggregate."""

    silo_id: str
    request_digest: bytes
    partial: PartialDecryption


def _proof_context(context: bytes, request_digest: bytes) -> bytes:
    return encode_fields(f"{_LABEL}/partial-decryption", context, request_digest)


# --------------------------------------------------------------------------------------------------------------
# Silo: encryption


class ContributorStage(enum.StrEnum):
    """Stages of :class:`PaillierContributor`."""

    READY = "ready"
    SUBMITTED = "submitted"


class PaillierContributor:
    """A silo's encryption side for one round: encrypts its update once.

    Args:
        silo_id: this silo's roster id.
        signing_key: this silo's Ed25519 roster key.
        public_key: the joint public key.
        config: the round configuration.
        pool: precomputed obfuscators (filled offline before the round).
    """

    def __init__(
        self,
        *,
        silo_id: str,
        signing_key: Ed25519PrivateKey,
        public_key: ThresholdPublicKey,
        config: PaillierRoundConfig,
        pool: ObfuscatorPool,
    ) -> None:
        self.silo_id = silo_id
        self._signing_key = signing_key
        self._public_key = public_key
        self._config = config
        self._packing = config.packing(public_key)
        self._pool = pool
        self.stage = ContributorStage.READY

    def __repr__(self) -> str:
        return f"PaillierContributor(silo_id={self.silo_id!r}, stage={self.stage.value!r})"

    def encrypt_update(
        self, values: npt.ArrayLike
    ) -> tuple[tuple[CiphertextChunk, ...], SignedCommitment]:
        """Pack, encrypt, chunk and commit to a quantized update.

        Args:
            values: integers in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, ``config.vector_length`` of them.

        Returns:
            The ciphertext chunks to stream and the signed commitment to send first.

        Raises:
            ProtocolError: called twice (a silo never submits the same round twice).
            ValueError: wrong length or values out of range.
        """
        if self.stage is not ContributorStage.READY:
            raise ProtocolError("this silo has already submitted for this round")
        array = np.asarray(values)
        if array.shape != (self._config.vector_length,):
            raise ValueError("update has the wrong length")
        plaintexts = self._packing.pack(array)
        ciphertexts = encrypt_plaintexts(self._public_key, plaintexts, self._pool)
        width = self._public_key.ciphertext_bytes
        data = ciphertexts_to_bytes(self._public_key, ciphertexts)
        stream = _MerkleStream()
        for offset in range(0, len(data), width):
            stream.push(_leaf_hash(data[offset : offset + width]))
        step = self._config.chunk_ciphertexts * width
        chunks = tuple(
            CiphertextChunk(silo_id=self.silo_id, chunk_index=i, data=data[offset : offset + step])
            for i, offset in enumerate(range(0, len(data), step))
        )
        unsigned = SignedCommitment(
            silo_id=self.silo_id,
            context=self._config.context(self._public_key),
            vector_length=self._config.vector_length,
            ciphertext_count=len(ciphertexts),
            merkle_root=stream.root(),
            signature=b"",
        )
        commitment = replace(unsigned, signature=sign(self._signing_key, unsigned.signed_message()))
        self.stage = ContributorStage.SUBMITTED
        return chunks, commitment


# --------------------------------------------------------------------------------------------------------------
# Coordinator side: aggregation


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
    next_chunk: int = 0
    received: int = 0
    merkle: _MerkleStream = field(default_factory=_MerkleStream)


class PaillierAggregator:
    """The coordinator's role: stream-multiply contributions, request and combine partial decryptions.

    Args:
        public_key: the joint public key.
        config: the round configuration.
        roster: silo id -> Ed25519 public key.
        store: where per-silo ciphertexts are kept for spot checks.

    Notes:
        The running aggregate is one ciphertext per position (memory grows with the vector, not the number of
        silos); sums are never re-obfuscated, since the product of fresh ciphertexts is already uniformly
        randomised. A contribution enters the aggregate chunk by chunk and is divided back out (inverses of its
        stored ciphertexts) if it turns out incomplete or inconsistent with its signed commitment.
    """

    def __init__(
        self,
        *,
        public_key: ThresholdPublicKey,
        config: PaillierRoundConfig,
        roster: Mapping[str, bytes],
        store: ContributionStore | None = None,
    ) -> None:
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
            context=self._context,
            vector_length=self._config.vector_length,
            ciphertext_count=self._count,
        )
        if any(c.merkle_root == commitment.merkle_root for c in self._complete.values()):
            raise ProtocolViolation("duplicate of another silo's contribution")
        self._in_flight[silo] = _InFlight(commitment=commitment)

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
            state.merkle.push(_leaf_hash(chunk.data[k * width : (k + 1) * width]))
            self._aggregate[start + k] = self._aggregate[start + k] * c % self._nsq
        state.next_chunk += 1
        state.received += len(ciphertexts)
        if state.received == self._count:
            if state.merkle.root() != state.commitment.merkle_root:
                self._drop(chunk.silo_id)
                raise ProtocolViolation(
                    "ciphertexts do not match the signed commitment; contribution dropped"
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

    def open_spot_checks(self, challenge: SpotCheckChallenge) -> SpotCheckResponse:
        """Open every contributor's ciphertext at the challenged positions, with inclusion proofs.

        Raises:
            ProtocolError: wrong stage, another request, or positions out of range.
        """
        self._require(AggregatorStage.DECRYPTING)
        if self._request is None:  # unreachable after _require; keeps mypy honest
            raise ProtocolError("no request in progress")
        if challenge.request_digest != self._request.digest():
            raise ProtocolError("challenge for another request")
        positions = sorted(set(challenge.positions))
        if not positions or positions[0] < 0 or positions[-1] >= self._count:
            raise ProtocolError("challenge positions out of range")
        width = self._public_key.ciphertext_bytes
        openings: list[SpotCheckOpening] = []
        for silo in sorted(self._complete):
            data = b"".join(self._store.chunks(silo))
            leaves = [_leaf_hash(data[k * width : (k + 1) * width]) for k in range(self._count)]
            for position in positions:
                openings.append(
                    SpotCheckOpening(
                        silo_id=silo,
                        position=position,
                        ciphertext=data[position * width : (position + 1) * width],
                        proof=tuple(_inclusion_proof(leaves, position)),
                    )
                )
        return SpotCheckResponse(request_digest=challenge.request_digest, openings=tuple(openings))

    def finish(self, partials: Sequence[PartialDecryptionMessage]) -> npt.NDArray[np.int64]:
        """Combine any ``t`` valid partial decryptions into the exact integer sum vector.

        Raises:
            RoundAborted: fewer than ``t`` valid partial decryptions for this request.
        """
        self._require(AggregatorStage.DECRYPTING)
        if self._request is None:  # unreachable after _require; keeps mypy honest
            raise ProtocolError("no request in progress")
        result = combine_partials(self._public_key, self._config, self._request, partials)
        self.stage = AggregatorStage.DONE
        return result


def combine_partials(
    public_key: ThresholdPublicKey,
    config: PaillierRoundConfig,
    request: DecryptionRequest,
    partials: Sequence[PartialDecryptionMessage],
) -> npt.NDArray[np.int64]:
    """The combiner: verify partial decryptions of ``request``, combine ``t`` of them, unpack the sum.

    Partial decryptions for another request are ignored; invalid proofs are refused and never combined.

    Raises:
        RoundAborted: fewer than ``t`` valid partial decryptions.
    """
    digest = request.digest()
    aggregate = ciphertexts_from_bytes(public_key, request.aggregate)
    relevant = [m.partial for m in partials if m.request_digest == digest]
    plaintexts = combine_partial_decryptions(
        public_key, aggregate, relevant, context=_proof_context(request.context, digest)
    )
    return config.packing(public_key).unpack_sum(
        plaintexts, length=config.vector_length, contributors=len(request.contributions)
    )


# --------------------------------------------------------------------------------------------------------------
# Silo: guarded partial decryption


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
        workers: threads for the exponentiations.
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
        workers: int = 1,
    ) -> None:
        if share.key_fingerprint != public_key.fingerprint():
            raise InvalidParameters("key share does not belong to this public key")
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
            drawn.add(_randbelow(self._rng, self._count))
        digest = request.digest()
        positions = self._history.bind(self._context, digest, tuple(sorted(drawn)))
        self._request = request
        self._aggregate = aggregate
        self._challenge = SpotCheckChallenge(request_digest=digest, positions=positions)
        self.stage = DecrypterStage.AWAITING_OPENINGS
        return self._challenge

    def partially_decrypt(self, response: SpotCheckResponse) -> PartialDecryptionMessage:
        """Verify the openings, then partially decrypt the aggregate with a proof.

        Raises:
            ProtocolViolation: a missing or extra opening, a bad inclusion proof, or a product of contributions
                that differs from the aggregate at a checked position.
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
                _verify_inclusion(
                    _leaf_hash(opening.ciphertext), position, self._count, opening.proof, root
                )
                try:
                    (value,) = ciphertexts_from_bytes(self._public_key, opening.ciphertext)
                except ValueError as exc:
                    raise ProtocolViolation("opened ciphertext outside Z*_{N^2}") from exc
                product = product * value % nsq
            if product != self._aggregate[position]:
                raise ProtocolViolation("aggregate is not the product of the signed contributions")
        partial = partial_decrypt(
            self._public_key,
            self._share,
            self._aggregate,
            context=_proof_context(self._context, digest),
            rng=self._rng,
            workers=self._workers,
        )
        self.stage = DecrypterStage.DONE
        return PartialDecryptionMessage(
            silo_id=self.silo_id, request_digest=digest, partial=partial
        )


def _randbelow(rng: RandomSource, bound: int) -> int:
    bits = max(1, bound.bit_length())
    nbytes = (bits + 7) // 8
    while True:
        candidate = int.from_bytes(rng(nbytes), "big") >> (8 * nbytes - bits)
        if candidate < bound:
            return candidate


SESSION_NONCE_BYTES = 16
"""Random bytes that, with the round's starting model hash, determine the session id (:func:`session_id_for`)."""


def session_id_for(nonce: bytes, model_hash: bytes) -> bytes:
    """The round's 32-byte session id: SHA-256 over a label, the coordinator's nonce and the model hash.

    Notes:
        Binding the model hash into the session id (which every commitment signature and proof covers) is what
        lets each silo check that all contributors were served the same model: a silo recomputes the id from
        the nonce and the hash of the model it downloaded, and decrypters accept only commitments bound to
        their own context.
    """
    return hashlib.sha256(encode_fields("secagg/paillier/session/v1", nonce, model_hash)).digest()
