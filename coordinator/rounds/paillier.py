"""Paillier mode's stages on the round driver: collect packed ciphertexts, then check and threshold-decrypt.

A round has four stages:

- ``collect`` (``[deadlines.paillier] collect``): each silo streams its packed ciphertexts after a signed
  Merkle commitment with a proof of plaintext knowledge; the :class:`~secagg.paillier.PaillierAggregator`
  verifies the proof, multiplies every chunk into the running aggregate as it arrives, checks the fold the
  proof covers, and spools the ciphertexts (:class:`~coordinator.store.spool.SQLiteContributionStore`) for spot
  checks. The stage closes early once every roster member has contributed or broken off.
- ``challenge`` (``challenge``): key holders fetch the aggregate with the signed commitments and post a
  challenge they draw themselves after binding the request: spot-check positions and a fold seed. Fewer than
  ``t`` challenges abort the round.
- ``fold`` (``fold``): every contributor fetches the recorded seeds and returns, signed and proven, the fold
  of its own ciphertexts for each. A contributor that does not answer aborts the round: its ciphertexts are in
  the aggregate, and no key holder decrypts an aggregate it cannot check.
- ``decrypt`` (``decrypt``): each key holder gets the openings and every contributor's fold for its seed,
  checks them, and returns its partial decryption (or refuses). The coordinator combines as soon as ``t``
  valid ones are in and decodes the exact integer sum; the driver applies FedAvg.

Notes:
    - The coordinator holds only the joint public key (DESIGN 5): it can multiply ciphertexts, never decrypt
      one. It asks key holders to decrypt the aggregate only; a silo checks that the aggregate is exactly the
      product of at least ``min_cohort`` roster-signed, proven contributions at every position (the fold,
      soundness error 2^-128) and keeps a persistent one-request-per-round history, so the coordinator cannot
      use it as a decryption oracle for one silo's ciphertext (:mod:`secagg.paillier` Notes).
    - The round's session id is ``SHA-256(label, 16 random bytes, SHA-256(global model))``
      (:func:`secagg.paillier.session_id_for`). It is bound into the round context every commitment is signed
      over, and each silo recomputes it from the nonce and the hash of the model it downloaded, so a
      coordinator that serves different models to different silos produces commitments no decrypter accepts
      (the role the signed model hash plays in masking mode's advertisements).
    - A contribution whose stream breaks stays "in flight" and is divided back out of the aggregate when the
      collect stage closes (the aggregator's rollback); the silo cannot restart it in the same round, because
      the protocol refuses a second commitment from a silo.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from audits import EventKind
from coordinator.common import DEFAULT_MAX_MESSAGE_BYTES, FloatVector, chunk_words
from coordinator.errors import InvalidInput, NotFound, StageError, Unauthorized
from coordinator.rounds.driver import Aggregate, RoundDriver, RoundState
from coordinator.rounds.uploads import Upload
from coordinator.store.spool import SQLiteContributionStore
from secagg.errors import InvalidParameters, RoundAborted, SecAggError
from secagg.hazmat.keys import RandomSource
from secagg.hazmat.paillier import ThresholdPublicKey
from secagg.paillier import (
    DEFAULT_SPOT_CHECKS,
    SESSION_NONCE_BYTES,
    CiphertextChunk,
    DecryptionRequest,
    FoldAnswer,
    FoldRequest,
    PaillierAggregator,
    PaillierRoundConfig,
    PartialDecryptionMessage,
    SignedCommitment,
    SpotCheckChallenge,
    SpotCheckResponse,
    check_trust_parameters,
    session_id_for,
)

__all__ = ["PaillierRounds", "PaillierStage"]

_REASON_CHARS = (
    300  # a silo's refusal reason is recorded, truncated (it names a check, never a payload)
)


class PaillierStage(enum.StrEnum):
    """Stages of a Paillier-mode round as the service runs it."""

    COLLECT = "collect"
    CHALLENGE = "challenge"
    FOLD = "fold"
    DECRYPT = "decrypt"
    DONE = "done"
    ABORTED = "aborted"


class _PaillierRound(RoundState):
    """A Paillier round: the aggregator (which holds the running aggregate), its spool and the answers."""

    def __init__(
        self,
        config: PaillierRoundConfig,
        aggregator: PaillierAggregator,
        spool: SQLiteContributionStore,
        start: FloatVector,
        start_hash: bytes,
        nonce: bytes,
    ) -> None:
        super().__init__(
            number=config.round_number,
            config=config,
            start=start,
            start_hash=start_hash,
            stage=PaillierStage.COLLECT,
        )
        self.session_nonce = nonce
        self.aggregator = aggregator
        self.spool = spool
        self.request: DecryptionRequest | None = None
        self.partials: dict[str, PartialDecryptionMessage] = {}
        self.refusals: dict[str, str] = {}
        self.combined = 0  # partial decryptions in the last combination tried

    @property
    def session_id(self) -> bytes:
        return bytes(self.config.session_id)


class _ContributionSink:
    """One silo's ciphertext chunks, multiplied into the aggregate as they arrive."""

    restartable = False  # the protocol refuses a second commitment from a silo

    def __init__(self, state: _PaillierRound, silo: str) -> None:
        self._state = state
        self._silo = silo

    def add(self, index: int, data: Any) -> None:
        self._state.aggregator.accept_chunk(CiphertextChunk(self._silo, index, data))

    def finish(self) -> None:
        if self._silo not in self._state.aggregator.contributors:
            raise InvalidInput("the upload ended before its last ciphertext")

    def rollback(self) -> None:
        """Nothing now: the aggregator divides an incomplete contribution out when the collect stage closes."""

    def close(self) -> None:
        pass


class PaillierRounds(RoundDriver):
    """Paillier mode (threshold Paillier, packed): two stages a round.

    Args:
        public_key: the joint threshold Paillier public key (the coordinator holds nothing else).
        max_message_bytes: the gRPC message limit; upload chunks are sized below it.
        spot_checks: positions each decrypter checks (silos insist on their own minimum).
        spool_dir: where per-round ciphertext spools are created (system temp by default).
        rng: randomness for session ids.
        workers: worker processes that verify and combine partial decryptions; ``None`` (default) uses every
            core.
        **driver: those of :class:`~coordinator.rounds.driver.RoundDriver`; ``settings.threshold`` must equal
            the key's ``t`` and the roster's members must be exactly the key's share holders (in order).

    Raises:
        InvalidInput: the key does not fit the roster or the settings: another ``t``, ``t <= collusion``
            (the coordinator and ``c`` silos could decrypt a single contribution) or
            ``min_cohort - collusion < 2`` (a decrypted aggregate could hold one honest contribution).

    Notes:
        ``t > c`` and ``min_cohort - c >= 2`` (DESIGN 5) are checked here as well as in the key ceremony:
        the settings may change after the key was dealt.
    """

    mode = "paillier"
    stages = (
        PaillierStage.COLLECT,
        PaillierStage.CHALLENGE,
        PaillierStage.FOLD,
        PaillierStage.DECRYPT,
    )
    done = PaillierStage.DONE
    aborted = PaillierStage.ABORTED
    upload_stage = PaillierStage.COLLECT
    uploaded = "contributed"
    _thread_name = "paillier-driver"

    def __init__(
        self,
        *,
        public_key: ThresholdPublicKey,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        spot_checks: int = DEFAULT_SPOT_CHECKS,
        spool_dir: Path | None = None,
        rng: RandomSource = os.urandom,
        workers: int | None = None,
        **driver: Any,
    ) -> None:
        super().__init__(**driver)
        if public_key.parties != len(self.roster.members):
            raise InvalidInput(
                f"the Paillier key was dealt to {public_key.parties} parties, the roster has "
                f"{len(self.roster.members)}"
            )
        if self.settings.threshold != public_key.threshold:
            raise InvalidInput(
                f"settings threshold {self.settings.threshold} differs from the key's "
                f"t={public_key.threshold}"
            )
        try:
            check_trust_parameters(
                threshold=public_key.threshold,
                collusion=self.settings.collusion,
                min_cohort=self.settings.min_cohort,
                parties=public_key.parties,
            )
        except InvalidParameters as exc:
            raise InvalidInput(f"Paillier settings refused: {exc}") from exc
        if workers is not None and workers < 1:
            raise InvalidInput("workers must be >= 1")
        self._workers = workers
        self.public_key = public_key
        self._rng = rng
        self._spot_checks = spot_checks
        self._spool_dir = spool_dir
        self.chunk_ciphertexts = max(
            1, (chunk_words(max_message_bytes) * 4) // public_key.ciphertext_bytes
        )
        self._key_fingerprint = public_key.fingerprint()
        self._set_up_store()

    # The driver's hooks ----------------------------------------------------------------------------------
    def stage_deadlines(self) -> Sequence[float]:
        d = self.settings.deadlines.paillier
        return (d.collect, d.challenge, d.fold, d.decrypt)

    def settings_facts(self) -> dict[str, Any]:
        return {"mode": "paillier", "paillier_key_fingerprint": self._key_fingerprint.hex()}

    def threat_model(self) -> dict[str, Any]:
        return {
            "mode": "paillier",
            "key_bits": self.public_key.key_bits,
            "key_fingerprint": self._key_fingerprint.hex(),
            "key_ceremony": "trusted dealer (Shoup / Damgard-Jurik threshold Paillier, safe primes)",
            "spot_checks": self._spot_checks,
            "aggregate_integrity": "every decrypter checks a fold of the whole aggregate with 128-bit "
            "weights it draws after the request is bound against the contributors' signed folds",
            "contribution_proofs": "proof of plaintext knowledge per contribution (CDN 2001 Sigma "
            "protocol, Fiat-Shamir), checked by the coordinator and every decrypter",
        }

    def announce(self, round_: int, session_id: bytes = b"\0" * 32) -> PaillierRoundConfig:
        s = self.settings
        return PaillierRoundConfig(
            federation_id=s.federation,
            round_number=round_,
            session_id=session_id,
            vector_length=s.vector_length,
            value_bits=s.bits,
            max_contributors=len(self.roster.members),
            min_cohort=s.min_cohort,
            spot_checks=self._spot_checks,
            chunk_ciphertexts=self.chunk_ciphertexts,
        )

    def open_state(self, round_: int, start: FloatVector, start_hash: bytes) -> RoundState:
        nonce = self._rng(SESSION_NONCE_BYTES)
        config = self.announce(round_, session_id_for(nonce, start_hash))
        spool = SQLiteContributionStore(self._spool_dir)
        aggregator = PaillierAggregator(
            public_key=self.public_key,
            config=config,
            roster=self.roster.members,
            store=spool,
            workers=self._workers,
        )
        return _PaillierRound(config, aggregator, spool, start, start_hash, nonce)

    def opened_facts(self, state: RoundState) -> dict[str, Any]:
        config = _round(state).config
        return {
            "mode": "paillier",
            "session_id": config.session_id.hex(),
            "threshold": self.public_key.threshold,
            "key_fingerprint": self._key_fingerprint.hex(),
            "spot_checks": config.spot_checks,
            "ciphertexts_per_silo": config.ciphertext_count(self.public_key),
        }

    def may_close(self, state: RoundState) -> bool:
        if state.stage is PaillierStage.COLLECT:
            return super().may_close(state)
        if state.stage is PaillierStage.CHALLENGE:
            # every key holder, a silo whose upload broke off included: it may still decrypt
            return state.expected <= state.arrived
        p = _round(state)
        if state.stage is PaillierStage.FOLD:
            return set(p.aggregator.contributors) <= state.arrived
        answered = set(p.partials) | set(p.refusals)
        t = self.public_key.threshold
        return (len(p.partials) >= t and len(p.partials) > p.combined) or _challengers(
            p
        ) <= answered

    def close_stage(self, state: RoundState, *, expired: bool) -> bool:
        p = _round(state)
        t = self.public_key.threshold
        with self.cond:
            if p.stage is PaillierStage.COLLECT:
                # incomplete contributions are divided back out here; RoundAborted below min_cohort
                p.request = p.aggregator.decryption_request()
                return True
            if p.stage is PaillierStage.CHALLENGE:
                challengers = _challengers(p)
                if len(challengers) < t:
                    raise RoundAborted(
                        f"{len(challengers)} key holders challenged the decryption request, {t} "
                        f"needed{_refused(p.refusals)}"
                    )
                return True
            if p.stage is PaillierStage.FOLD:
                silent = sorted(set(p.aggregator.contributors) - set(p.aggregator.folded))
                if silent:
                    raise RoundAborted(
                        f"contributors {silent} did not answer the fold requests: the aggregate "
                        "cannot be checked"
                    )
                return True
            partials = list(p.partials.values())
            refusals = dict(p.refusals)
            everyone = _challengers(p) <= (set(p.partials) | set(p.refusals))
        last_chance = expired or everyone
        if len(partials) >= t and len(partials) > p.combined:
            p.combined = len(partials)
            try:
                # outside the lock: proof checks and combination cost exponentiations over the vector
                total = p.aggregator.finish(partials)
            except RoundAborted as exc:
                self.audit.record(
                    EventKind.VERIFICATION_FAILURE,
                    p.number,
                    {"what": "partial_decryption", "reason": str(exc)},
                )
                if not last_chance:
                    return False
                raise
            contributors = tuple(c.silo_id for c in p.request.contributions) if p.request else ()
            ring = np.asarray(total, dtype=np.int64).astype(
                np.uint32
            )  # two's complement, as masking
            p.aggregate = Aggregate(
                contributors, total=ring, extra_participants={"decrypters": sorted(p.partials)}
            )
            return True
        if not last_chance:
            return False
        raise RoundAborted(f"{len(partials)} partial decryptions, {t} needed{_refused(refusals)}")

    def close_round(self, state: RoundState) -> None:
        _round(state).spool.close()

    # Silo-facing API -------------------------------------------------------------------------------------
    def contribution(
        self,
        silo: str,
        round_: int,
        commitment: SignedCommitment,
        *,
        attestation: bytes = b"",
        signature: bytes = b"",
    ) -> Upload:
        """Stage collect: start a streamed contribution (a context manager).

        Raises:
            Unauthorized: the commitment names another silo.
            DuplicateSubmission: the silo already contributed (or is uploading) this round.
            StageError: an earlier upload of this silo broke off; it cannot be restarted this round.
            PrivacyRefused, InvalidInput: see :func:`~coordinator.rounds.audit.attest_contribution`; a forged
                or mis-bound commitment.
        """
        if commitment.silo_id != silo:
            raise Unauthorized("a silo can only commit to its own contribution")

        def sink(state: RoundState) -> _ContributionSink:
            p = _round(state)
            p.aggregator.accept_commitment(commitment)
            return _ContributionSink(p, silo)

        return self.open_upload(silo, round_, sink, attestation=attestation, signature=signature)

    def decryption_request(self, silo: str, round_: int, wait: float) -> DecryptionRequest:
        """Stage challenge: the request every key holder is asked to check and partially decrypt."""
        self.member(silo)
        request = _round(self.wait_past(round_, PaillierStage.COLLECT, wait)).request
        if request is None:
            raise StageError(f"round {round_} has no decryption request")
        return request

    def challenge(self, silo: str, round_: int, challenge: SpotCheckChallenge) -> None:
        """Stage challenge: a key holder's spot-check positions and fold seed.

        Raises:
            InvalidInput: too many positions, another request, a malformed seed, or a second challenge.
        """
        self.member(silo)
        with self.cond:
            spot_checks = _round(self.current(round_, PaillierStage.CHALLENGE)).config.spot_checks
        if len(challenge.positions) > max(spot_checks, DEFAULT_SPOT_CHECKS) * 4:
            raise InvalidInput("too many spot-check positions")
        self.submit(
            silo,
            round_,
            PaillierStage.CHALLENGE,
            lambda state: _round(state).aggregator.record_challenge(silo, challenge),
            already="challenged the decryption request",
        )

    def fold_requests(
        self, silo: str, round_: int, wait: float
    ) -> tuple[bytes, tuple[FoldRequest, ...]]:
        """Stage fold: the request's digest and every recorded challenge's seed, for a contributor.

        Raises:
            Unauthorized: the caller did not contribute to the request.
        """
        self.member(silo)
        p = _round(self.wait_past(round_, PaillierStage.CHALLENGE, wait))
        with self.cond:
            if p.request is None or silo not in p.aggregator.contributors:
                raise Unauthorized(f"{silo} did not contribute to round {round_}")
            return p.request.digest(), p.aggregator.fold_requests()

    def folds(self, silo: str, round_: int, answers: Sequence[FoldAnswer]) -> None:
        """Stage fold: a contributor's signed folds, one per recorded challenge (signatures and proofs checked)."""
        self.submit(
            silo,
            round_,
            PaillierStage.FOLD,
            lambda state: _round(state).aggregator.accept_folds(silo, answers),
            already="answered the fold requests",
        )

    def open_spot_checks(
        self, silo: str, round_: int, challenge: SpotCheckChallenge, wait: float = 0.0
    ) -> SpotCheckResponse:
        """Stage decrypt: open every contribution at the caller's positions, with the folds for its seed
        (blocks until the fold stage has closed)."""
        self.member(silo)
        self.wait_past(round_, PaillierStage.FOLD, wait)
        with self.cond:
            p = _round(self.current(round_, PaillierStage.DECRYPT))
            if len(challenge.positions) > max(p.config.spot_checks, DEFAULT_SPOT_CHECKS) * 4:
                raise InvalidInput("too many spot-check positions")
            try:
                return p.aggregator.open_spot_checks(challenge)
            except SecAggError as exc:
                raise InvalidInput(str(exc)) from exc

    def partial_decryption(self, silo: str, round_: int, message: PartialDecryptionMessage) -> None:
        """Stage decrypt: a key holder's partial decryption (its proof is checked when combined)."""
        if message.silo_id != silo:
            raise Unauthorized("a silo can only decrypt as itself")

        def receive(state: RoundState) -> None:
            p = _round(state)
            assert p.request is not None
            if message.request_digest != p.request.digest():
                raise InvalidInput("the partial decryption is for another request")
            if message.partial.index != self.roster.index(silo):
                raise InvalidInput("the partial decryption names another share index")
            if len(message.partial.values) != p.config.ciphertext_count(self.public_key):
                raise InvalidInput("the partial decryption has the wrong length")
            p.partials[silo] = message

        self.submit(
            silo,
            round_,
            PaillierStage.DECRYPT,
            receive,
            already="answered the decryption request",
        )

    def refuse(self, silo: str, round_: int, request_digest: bytes, reason: str) -> None:
        """Stage challenge, fold or decrypt: a key holder refuses the request; recorded as a verification
        failure."""
        text = reason[:_REASON_CHARS] or "refused"
        with self.cond:
            stage = next(
                (s for s in _CHECK_STAGES if self.stage_open_for(round_, s)), PaillierStage.DECRYPT
            )

        def receive(state: RoundState) -> None:
            _round(state).refusals[silo] = text
            self.audit.record(
                EventKind.VERIFICATION_FAILURE,
                round_,
                {
                    "what": "decryption_request",
                    "reason": text,
                    "silo": silo,
                    "request_digest": request_digest.hex(),
                },
            )

        self.submit(silo, round_, stage, receive, already="answered the decryption request")

    def stage_open_for(self, round_: int, stage: PaillierStage) -> bool:
        """Whether round ``round_`` is open in ``stage`` (caller holds :attr:`cond`)."""
        try:
            self.current(round_, stage)
        except (StageError, NotFound):
            return False
        return True


_CHECK_STAGES: Final = (PaillierStage.CHALLENGE, PaillierStage.FOLD, PaillierStage.DECRYPT)
"""The stages in which a key holder may refuse the request."""


def _challengers(p: _PaillierRound) -> set[str]:
    return {r.decrypter for r in p.aggregator.fold_requests()} if p.request is not None else set()


def _refused(refusals: dict[str, str]) -> str:
    return f"; refused by {sorted(refusals)}" if refusals else ""


def _round(state: RoundState) -> _PaillierRound:
    assert isinstance(state, _PaillierRound)
    return state
