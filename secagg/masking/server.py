"""The coordinator's side of the masking protocol: an I/O-free stage machine, one method per stage.

The server never sees an individual input: it adds masked vectors into one running sum as their chunks
arrive (memory grows with the vector length, not the number of silos) and removes the masks with the
shares the survivors reveal. Deadlines live in the caller: ``close_*`` ends a stage with whoever arrived.

Notes:
    The server also checks what it can (roster signatures on advertisements, recipients of share ciphertexts,
    vector lengths, one submission per silo) so bad input is refused early with a clear error and changes no
    state. Its checks protect the round's liveness; the silos' own checks protect their privacy.

    A member silo may reveal wrong Shamir shares in stage 5 (DESIGN 2 and 4.4). Shifting its self-mask share
    for a peer by the inverse of its public Lagrange coefficient moves the reconstructed seed by exactly 1: still
    a valid seed, so an unchecked server completes the round with a sum that is pure noise and nobody is named.
    So :meth:`SecAggServer.close_unmask` keeps every response, checks each reconstructed b_u against the seed
    commitment signed into its owner's advertisement (and each dropped silo's mask key against its advertised
    public key, in the canonical clamped form the client shares), decodes around wrong shares
    (:func:`secagg.hazmat.shamir.decode`), names every holder whose share is off the polynomial that yields
    the committed secret, and leaves all of that holder's shares out. The common case costs one random
    linear combination of all shares and one interpolation (:func:`secagg.hazmat.shamir.check_consistent`).

    What naming can and cannot tell: shares travel encrypted from their dealer, and nothing signs what a dealer
    sent to a holder, so a malicious dealer that gives an honest holder a wrong share makes that holder look like
    the culprit; per-share digests bound into the share ciphertext's associated data would settle it, and are not
    part of this version. Exact naming is guaranteed up to floor((k - t + 1) / 2) wrong holders of k responses;
    beyond that (up to k - t), independently made wrong shares are still named, colluding ones may shift the
    blame (see :func:`~secagg.hazmat.shamir.decode`); the sum is exact whenever the round completes.

    On the SecAgg+ graph (``RoundConfig.graph_degree``, :mod:`secagg.masking.graph`) every silo sends shares to
    its neighbours only, a peer's secrets are reconstructed from the responses of its closed neighbourhood with
    the per-neighbourhood threshold, and the checks above (commitments, decoding, naming) run per secret over
    the holders that hold it.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg.errors import InvalidSignature, ProtocolError, ProtocolViolation, RoundAborted
from secagg.hazmat import shamir
from secagg.hazmat.keys import KEY_BYTES, RandomSource, agree, verify
from secagg.hazmat.prg import MaskStream
from secagg.masking.client import clamped_scalar, pairwise_mask_key, self_mask_key
from secagg.masking.config import RoundConfig
from secagg.masking.graph import CommunicationGraph, communication_graph
from secagg.masking.messages import (
    COMMITMENT_BYTES,
    Advertisement,
    EncryptedShare,
    ShareKeys,
    Stage,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    advertisement_payload,
    seed_commitment,
    session_id,
    survivors_payload,
)
from secagg.roster import Roster

__all__ = ["SEARCH_BUDGET", "AggregateResult", "SecAggServer"]

SEARCH_BUDGET = 4096
"""t-subsets :meth:`SecAggServer.close_unmask` tries in all, beyond Gao's decoding radius, before giving up."""

_SELF_MASK = "self-mask"
_MASK_KEY = "mask-key"


@dataclass(frozen=True)
class AggregateResult:
    """The output of a round: the sum of the survivors' quantized inputs mod 2^32, who is in it, who was caught.

    Attributes:
        total: the sum of the survivors' quantized inputs mod 2^32.
        survivors: U3, whose inputs are in the sum.
        dropped: U2 minus U3, whose pairwise masks were removed with their reconstructed mask keys.
        culprits: silo id -> evidence for every share holder whose unmask shares were inconsistent; their
            shares were left out. The evidence names the round, the peer whose reconstruction disagreed and the
            check that failed, never a share or a secret. A culprit that survived is still in the sum: its own
            input is not checkable (DESIGN 2).
    """

    total: npt.NDArray[np.uint32]
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    culprits: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class _Secret:
    """One secret to reconstruct in stage 5: a survivor's self-mask seed or a dropped silo's mask key."""

    peer: str
    kind: str  # _SELF_MASK or _MASK_KEY

    @property
    def what(self) -> str:
        return "self-mask seed" if self.kind == _SELF_MASK else "mask key"

    @property
    def matching(self) -> str:
        """The secret as the peer's signed advertisement pins it down."""
        if self.kind == _SELF_MASK:
            return f"committed self-mask seed of {self.peer}"
        return f"advertised mask key of {self.peer}"

    @property
    def check(self) -> str:
        """What the reconstructed secret must match: part of the peer's signed advertisement."""
        return "seed commitment" if self.kind == _SELF_MASK else "advertised mask public key"


class SecAggServer:
    """The server role for one round. ``config`` and ``roster`` are the coordinator's own.

    Args:
        config: the round parameters.
        roster: the verified roster.
        rng: randomness for the stage-5 consistency check; ``os.urandom`` unless a test injects one.
    """

    def __init__(
        self, *, config: RoundConfig, roster: Roster, rng: RandomSource = os.urandom
    ) -> None:
        if roster.federation != config.federation or len(roster.members) != config.n:
            raise ProtocolError("round config does not match the roster")
        self.config = config
        self.stage = Stage.ADVERTISE_KEYS
        self._roster = roster
        self._ads: dict[str, Advertisement] = {}
        self._session = b""
        self._shares: dict[str, ShareKeys] = {}
        self._u2: tuple[str, ...] = ()
        self._total = np.zeros(0, dtype=np.uint32)
        self._received: dict[str, int] = {}
        self._u3: tuple[str, ...] = ()
        self._signatures: dict[str, SurvivorSignature] = {}
        self._request: UnmaskRequest | None = None
        self._responses: dict[str, UnmaskResponse] = {}
        self._rng = rng
        self._culprits: dict[str, list[str]] = {}
        self._graph: CommunicationGraph | None = None

    def __repr__(self) -> str:
        return f"SecAggServer(round={self.config.round}, stage={self.stage.value!r})"

    @property
    def session_id(self) -> bytes:
        """The session id, known once stage 1 has closed."""
        return self._session

    @property
    def graph(self) -> CommunicationGraph:
        """The round's communication graph, known once stage 1 has closed."""
        if self._graph is None:
            raise ProtocolError("the graph is known once stage 1 has closed")
        return self._graph

    def _view(self, silo: str) -> frozenset[str]:
        """The U2 a silo of U2 sees: itself and the U2 senders among its neighbours (whose shares it holds)."""
        return self.graph.closed_neighbourhood(silo) & set(self._u2)

    @property
    def culprits(self) -> Mapping[str, str]:
        """Silo id -> evidence for every silo :meth:`close_unmask` caught with inconsistent shares.

        Set by :meth:`close_unmask` whether it returns or aborts (empty before); the same as
        :attr:`AggregateResult.culprits` when it returns.
        """
        return MappingProxyType({s: "; ".join(e) for s, e in sorted(self._culprits.items())})

    def received(self, silo: str) -> int:
        """How many coordinates of ``silo``'s masked vector are in the running sum (read-only).

        0 before its first chunk, back to a chunk's offset when that chunk is discarded, and
        ``config.vector_length`` once the upload is complete. Lets a caller see that a chunk has *arrived*,
        not merely been sent.
        """
        received = self._received.get(silo, 0)
        return self.config.vector_length if received < 0 else received

    def _expect(self, stage: Stage) -> None:
        if self.stage != stage:
            raise ProtocolError(f"expected stage {stage.value}; the round is in {self.stage.value}")

    def _member(self, silo: str) -> None:
        if silo not in self._roster.members:
            raise ProtocolError(f"{silo!r} is not on the roster")

    def _require(self, count: int, what: str) -> None:
        if count < self.config.required_survivors:
            self.stage = Stage.ABORTED
            raise RoundAborted(
                f"only {count} silos {what}; the round needs {self.config.required_survivors} "
                f"(threshold {self.config.threshold}, min_cohort {self.config.min_cohort})"
            )

    # Stage 1 -------------------------------------------------------------------------------------------
    def receive_advertisement(self, ad: Advertisement) -> None:
        """Accept one silo's advertisement after verifying its roster signature."""
        self._expect(Stage.ADVERTISE_KEYS)
        self._member(ad.silo)
        if ad.silo in self._ads:
            raise ProtocolError(f"{ad.silo} already advertised keys this round")
        if len(ad.enc_public) != KEY_BYTES or len(ad.mask_public) != KEY_BYTES:
            raise ProtocolError(
                f"advertisement of {ad.silo}: public keys must be {KEY_BYTES} bytes"
            )
        if len(ad.seed_commitment) != COMMITMENT_BYTES:
            raise ProtocolError(
                f"advertisement of {ad.silo}: the seed commitment must be {COMMITMENT_BYTES} bytes"
            )
        try:
            payload = advertisement_payload(
                self.config, ad.silo, ad.enc_public, ad.mask_public, ad.seed_commitment
            )
            verify(self._roster.key(ad.silo), ad.signature, payload)
        except InvalidSignature as exc:
            raise ProtocolViolation(f"advertisement of {ad.silo} does not verify") from exc
        used = {k for other in self._ads.values() for k in (other.enc_public, other.mask_public)}
        if {ad.enc_public, ad.mask_public} & used or ad.enc_public == ad.mask_public:
            raise ProtocolViolation(f"advertisement of {ad.silo} reuses a public key")
        self._ads[ad.silo] = ad

    def close_advertise(self) -> tuple[Advertisement, ...]:
        """End stage 1: fix U1 and the session id, and return U1 for broadcast."""
        self._expect(Stage.ADVERTISE_KEYS)
        self._require(len(self._ads), "advertised keys")
        ads = tuple(self._ads[s] for s in sorted(self._ads))
        self._session = session_id(self.config, ads)
        self._graph = communication_graph(
            self._roster.members, self.config.graph_degree, self._session
        )
        self.stage = Stage.SHARE_KEYS
        return ads

    # Stage 2 -------------------------------------------------------------------------------------------
    def receive_shares(self, message: ShareKeys) -> None:
        """Accept one sender's share ciphertexts: exactly one for every other member of U1 (every neighbour in
        U1 on a SecAgg+ graph)."""
        self._expect(Stage.SHARE_KEYS)
        if message.sender not in self._ads:
            raise ProtocolError(f"{message.sender!r} is not in U1")
        if message.sender in self._shares:
            raise ProtocolError(f"{message.sender} already sent its shares")
        recipients = [s.recipient for s in message.shares]
        expected = set(self._ads) & self.graph.neighbours(message.sender)
        if len(recipients) != len(expected) or set(recipients) != expected:
            whom = "other member" if self.graph.is_full else "neighbour in"
            raise ProtocolError(f"{message.sender} must send exactly one share to every {whom} U1")
        if any(s.sender != message.sender for s in message.shares):
            raise ProtocolError("share sender does not match the message sender")
        self._shares[message.sender] = message

    def close_share_keys(self) -> Mapping[str, tuple[EncryptedShare, ...]]:
        """End stage 2: fix U2 and return each member's inbox (only shares from U2 senders)."""
        self._expect(Stage.SHARE_KEYS)
        self._require(len(self._shares), "shared their keys")
        self._u2 = tuple(sorted(self._shares))
        inbox: dict[str, list[EncryptedShare]] = {silo: [] for silo in self._u2}
        for sender in self._u2:
            for share in self._shares[sender].shares:
                if share.recipient in inbox:
                    inbox[share.recipient].append(share)
        self._shares.clear()
        self._total = np.zeros(self.config.vector_length, dtype=np.uint32)
        self.stage = Stage.MASKED_INPUT
        return MappingProxyType({silo: tuple(shares) for silo, shares in inbox.items()})

    # Stage 3 -------------------------------------------------------------------------------------------
    def add_masked_chunk(self, silo: str, offset: int, chunk: npt.NDArray[np.uint32]) -> None:
        """Add one chunk of a silo's masked vector into the running sum (chunks in order, no gaps)."""
        self._expect(Stage.MASKED_INPUT)
        if silo not in self._u2:
            raise ProtocolError(f"{silo!r} is not in U2")
        received = self._received.get(silo, 0)
        if received < 0:
            raise ProtocolError(f"{silo} already submitted its masked input")
        if offset != received:
            raise ProtocolError(f"chunk offset {offset} from {silo}; expected {received}")
        if chunk.dtype != np.uint32 or chunk.ndim != 1 or chunk.shape[0] == 0:
            raise ProtocolError("a chunk must be a non-empty uint32 vector")
        end = offset + chunk.shape[0]
        if end > self.config.vector_length:
            raise ProtocolError(
                f"masked vector of {silo} is longer than {self.config.vector_length}"
            )
        target = self._total[offset:end]
        np.add(target, chunk, out=target)
        self._received[silo] = end

    def discard_masked_chunk(self, silo: str, offset: int, chunk: npt.NDArray[np.uint32]) -> None:
        """Undo the last added chunk of an upload that broke off, so a partial vector never pollutes the sum."""
        self._expect(Stage.MASKED_INPUT)
        if self._received.get(silo, 0) != offset + chunk.shape[0] or offset < 0:
            raise ProtocolError(
                "only the last added chunk of an unfinished upload can be discarded"
            )
        target = self._total[offset : offset + chunk.shape[0]]
        np.subtract(target, chunk, out=target)
        self._received[silo] = offset

    def finish_masked_input(self, silo: str) -> None:
        """Mark a silo's upload complete; it must have exactly ``vector_length`` coordinates."""
        self._expect(Stage.MASKED_INPUT)
        received = self._received.get(silo, 0)
        if received != self.config.vector_length:
            raise ProtocolError(
                f"masked vector of {silo} has {max(received, 0)} coordinates; expected {self.config.vector_length}"
            )
        self._received[silo] = -1  # complete: any further chunk is a second submission

    def close_masked_input(self) -> tuple[str, ...]:
        """End stage 3: fix U3 (completed uploads) and return it for the consistency check."""
        self._expect(Stage.MASKED_INPUT)
        partial = [s for s, n in self._received.items() if n > 0]
        if partial:
            raise ProtocolError(
                f"unfinished uploads must be discarded first: {', '.join(sorted(partial))}"
            )
        u3 = tuple(sorted(s for s, n in self._received.items() if n == -1))
        self._require(len(u3), "submitted masked input")
        self._u3 = u3
        self.stage = Stage.CONSISTENCY_CHECK
        return u3

    # Stage 4 -------------------------------------------------------------------------------------------
    def receive_survivor_signature(self, signature: SurvivorSignature) -> None:
        """Accept a survivor's signature on U3 after verifying it."""
        self._expect(Stage.CONSISTENCY_CHECK)
        if signature.silo not in self._u3:
            raise ProtocolError(f"{signature.silo!r} is not in U3")
        if signature.silo in self._signatures:
            raise ProtocolError(f"{signature.silo} already signed the survivor set")
        try:
            verify(
                self._roster.key(signature.silo),
                signature.signature,
                survivors_payload(self._session, self._u3),
            )
        except InvalidSignature as exc:
            raise ProtocolViolation(
                f"survivor-set signature of {signature.silo} does not verify"
            ) from exc
        self._signatures[signature.silo] = signature

    def close_consistency(self) -> UnmaskRequest:
        """End stage 4: the request every signer receives. Needs >= t signatures."""
        self._expect(Stage.CONSISTENCY_CHECK)
        if len(self._signatures) < self.config.threshold:
            self.stage = Stage.ABORTED
            raise RoundAborted(
                f"only {len(self._signatures)} silos signed the survivor set; need {self.config.threshold}"
            )
        dropped = tuple(s for s in self._u2 if s not in self._u3)
        self._request = UnmaskRequest(self._u3, dropped, tuple(self._signatures.values()))
        self.stage = Stage.UNMASK
        return self._request

    # Stage 5 -------------------------------------------------------------------------------------------
    def receive_unmask(self, response: UnmaskResponse) -> None:
        """Accept a signer's shares: self-mask shares of every survivor, mask-key shares of every dropped silo."""
        self._expect(Stage.UNMASK)
        assert self._request is not None
        if response.silo not in self._signatures:
            raise ProtocolError(f"{response.silo!r} did not sign the survivor set")
        if response.silo in self._responses:
            raise ProtocolError(f"{response.silo} already sent its unmask shares")
        view = self._view(response.silo)
        if (
            set(response.self_mask_shares) != set(self._request.survivors) & view
            or set(response.mask_key_shares) != set(self._request.dropped) & view
        ):
            raise ProtocolError(f"unmask shares of {response.silo} do not match the request")
        for share in (*response.self_mask_shares.values(), *response.mask_key_shares.values()):
            if len(share) != shamir.SHARE_BYTES or int.from_bytes(share, "big") >= shamir.PRIME:
                raise ProtocolError(f"unmask shares of {response.silo} are malformed")
        self._responses[response.silo] = response

    def close_unmask(self) -> AggregateResult:
        """End stage 5: reconstruct and check every mask secret from all responses, and return the unmasked sum.

        Each survivor's self-mask seed must match the commitment in its advertisement and each dropped silo's
        mask key its advertised public key. A holder whose share for some peer is off the polynomial that yields
        the matching secret is a culprit (:attr:`culprits`): all its shares are left out, and the round completes
        with the exact sum if at least t consistent holders remain and every secret was recovered.

        Raises:
            RoundAborted: fewer than t responses; a secret that no t consistent shares reconstruct to match; or
                fewer than t consistent holders once the culprits are left out. The message names the culprits
                and the secrets that failed, never a share or a secret.
        """
        self._expect(Stage.UNMASK)
        assert self._request is not None
        t = self.config.threshold
        if len(self._responses) < t:
            self.stage = Stage.ABORTED
            raise RoundAborted(f"only {len(self._responses)} silos sent unmask shares; need {t}")
        try:
            seeds, keys = self._recover_secrets()
        except RoundAborted:
            self.stage = Stage.ABORTED
            raise
        finally:
            self._responses.clear()
        index = self._roster.index
        stream = MaskStream()
        total = self._total
        for silo in self._request.survivors:
            stream.add(total, self_mask_key(seeds[silo], self._session, index(silo)), subtract=True)
        for gone in self._request.dropped:
            private = X25519PrivateKey.from_private_bytes(keys[gone])
            for silo in sorted(set(self._request.survivors) & self._view(gone)):
                secret = agree(private, self._ads[silo].mask_public)
                key = pairwise_mask_key(secret, self._session, index(silo), index(gone))
                # the survivor added +PRG when its index is lower, -PRG otherwise; undo that
                stream.add(total, key, subtract=index(silo) < index(gone))
        self.stage = Stage.DONE
        return AggregateResult(total, self._request.survivors, self._request.dropped, self.culprits)

    def _recover_secrets(self) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """Every survivor's b_u and every dropped silo's mask key, checked; culprits go to ``_culprits``.

        Notes:
            Common case: one random linear combination of all shares shows every secret's shares on one
            polynomial (cost ~ one multiplication per share plus one interpolation), and each secret comes from
            its first t shares and matches its commitment or public key. Otherwise every secret not yet
            recovered is decoded from the same set of holders (Gao's decoder, then a bounded search, in
            :func:`secagg.hazmat.shamir.decode`), so who is named does not depend on the order of the peers;
            the holders off the polynomial that yields a matching secret are named and every one of their shares
            is dropped; secrets that failed are decoded again without them, until nothing changes. Finally the
            secrets are reconstructed again from the remaining holders alone, which must be at least t and
            consistent for every secret.
        """
        assert self._request is not None
        t = self.config.threshold
        index = self._roster.index
        secrets = [_Secret(p, _SELF_MASK) for p in self._request.survivors] + [
            _Secret(p, _MASK_KEY) for p in self._request.dropped
        ]
        responses = len(self._responses)
        active = sorted(self._responses, key=index)
        short = [s for s in secrets if sum(self._holds(h, s) for h in active) < t]
        if (
            short
        ):  # only on a SecAgg+ graph: the full graph's holders are all responders, already >= t
            raise RoundAborted(
                f"round {self.config.round} unmask failed: fewer than {t} holders responded for the "
                + ", ".join(s.matching for s in short)
            )
        x_of = {h: index(h) for h in active}  # Roster.index is a list search: look each up once
        holder_at = {x: h for h, x in x_of.items()}

        def shares(secret: _Secret, holders: list[str]) -> dict[int, bytes]:
            return {x_of[h]: self._share(h, secret) for h in holders if self._holds(h, secret)}

        recovered: dict[_Secret, bytes] = {}
        pending = secrets
        everyone = [shares(s, active) for s in secrets]
        groups: dict[tuple[int, ...], list[dict[int, bytes]]] = {}  # one check per set of holders
        for held in everyone:
            groups.setdefault(tuple(sorted(held)), []).append(held)
        try:
            for group in groups.values():
                shamir.check_consistent(group, threshold=t, rng=self._rng)
        except ProtocolViolation:
            pass  # some share is wrong: decode every secret below
        else:
            for secret, held in zip(secrets, everyone, strict=True):
                value = _first_t(held, t)
                if value is not None and self._acceptor(secret)(value):
                    recovered[secret] = value
            pending = [s for s in secrets if s not in recovered]
            if not pending:
                return _by_kind(recovered)  # the common case: nobody lied
        failed: dict[_Secret, str] = {}  # secret -> why (public text)
        budget = SEARCH_BUDGET
        while pending and len(active) >= t:
            holders = list(active)  # one set of holders for the whole pass
            caught: set[str] = set()
            retry: dict[_Secret, str] = {}
            for secret in pending:
                accept = self._acceptor(secret)
                held = shares(secret, holders)
                if _on_one_polynomial(held, t):
                    value = _first_t(held, t)
                    if value is not None and accept(value):
                        recovered[secret] = value
                        continue
                    failed[secret] = (
                        "its holders agree on another secret"
                        if len(held) >= t
                        else f"only {len(held)} of its holders responded"
                    )
                    if len(held) > t:
                        # t + 1 or more holders agree, so (with at most k - t wrong holders) the dealer lied
                        self._blame_dealer(secret, len(holders))
                        caught.add(secret.peer)
                    continue
                try:
                    decoding = shamir.decode(held, threshold=t, accept=accept, max_subsets=budget)
                except ProtocolViolation as exc:
                    budget = 0  # a failed search spent the budget; a retry gets Gao's decoder only
                    retry[secret] = str(exc)  # public text: never a share or a secret
                    continue
                budget -= decoding.subsets
                recovered[secret] = decoding.secret
                for x in sorted(decoding.errors):
                    holder = holder_at[x]
                    caught.add(holder)
                    self._blame(
                        holder,
                        f"round {self.config.round}: its {secret.kind} share for {secret.peer} is not on "
                        f"the polynomial that reconstructs the {secret.matching} ({decoding.agreeing} "
                        f"of {len(held)} unmask responses agree)",
                    )
            active = [h for h in active if h not in caught]
            pending = list(retry)
            failed.update(retry)
            if not caught:
                break  # nothing left out this pass: another pass would decode the same shares
            for secret in pending:
                del failed[secret]  # decoded again without the culprits
        if len(active) >= t:
            # redo every reconstruction without the culprits: t consistent holders must remain for each secret
            for secret, value in recovered.items():
                held = shares(secret, active)
                if len(held) < t or not _on_one_polynomial(held, t) or _first_t(held, t) != value:
                    failed[secret] = "the remaining holders are not consistent"
        if failed or len(active) < t:
            problems = []
            if failed:
                problems.append(
                    "could not reconstruct "
                    + ", ".join(f"the {s.matching} ({why})" for s, why in failed.items())
                    + f" from {responses} unmask responses"
                )
            if len(active) < t:
                problems.append(f"only {len(active)} consistent unmask responses remain; need {t}")
            if self._culprits:
                problems.append(f"culprits: {', '.join(sorted(self._culprits))}")
            raise RoundAborted(f"round {self.config.round} unmask failed: {'; '.join(problems)}")
        return _by_kind(recovered)

    def _holds(self, holder: str, secret: _Secret) -> bool:
        response = self._responses[holder]
        shares = (
            response.self_mask_shares if secret.kind == _SELF_MASK else response.mask_key_shares
        )
        return secret.peer in shares

    def _share(self, holder: str, secret: _Secret) -> bytes:
        response = self._responses[holder]
        if secret.kind == _SELF_MASK:
            return response.self_mask_shares[secret.peer]
        return response.mask_key_shares[secret.peer]

    def _acceptor(self, secret: _Secret) -> Callable[[bytes], bool]:
        """Whether a reconstructed value is the secret the peer's signed advertisement commits to."""
        ad = self._ads[secret.peer]
        if secret.kind == _SELF_MASK:
            config = self.config

            def matches_commitment(seed: bytes) -> bool:
                return hmac.compare_digest(
                    seed_commitment(config, ad.silo, seed), ad.seed_commitment
                )

            return matches_commitment

        def matches_public_key(scalar: bytes) -> bool:
            if clamped_scalar(scalar) != scalar:  # one canonical form per key (see clamped_scalar)
                return False
            public = X25519PrivateKey.from_private_bytes(scalar).public_key().public_bytes_raw()
            return hmac.compare_digest(public, ad.mask_public)

        return matches_public_key

    def _blame(self, silo: str, evidence: str) -> None:
        self._culprits.setdefault(silo, []).append(evidence)

    def _blame_dealer(self, secret: _Secret, holders: int) -> None:
        self._blame(
            secret.peer,
            f"round {self.config.round}: all {holders} unmask responses agree on its {secret.what}, "
            f"and it does not match its {secret.check}",
        )


def _by_kind(recovered: Mapping[_Secret, bytes]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(survivor -> self-mask seed, dropped silo -> mask key)."""
    return (
        {s.peer: v for s, v in recovered.items() if s.kind == _SELF_MASK},
        {s.peer: v for s, v in recovered.items() if s.kind == _MASK_KEY},
    )


def _first_t(shares: Mapping[int, bytes], threshold: int) -> bytes | None:
    """The secret the first t shares reconstruct, or ``None`` when they encode no 32-byte secret."""
    try:
        return shamir.reconstruct(shares, threshold=threshold)
    except ProtocolViolation:
        return None


def _on_one_polynomial(shares: Mapping[int, bytes], threshold: int) -> bool:
    try:
        shamir.check_consistent([shares], threshold=threshold)
    except ProtocolViolation:
        return False
    return True
