"""The silo's side of the masking protocol: an I/O-free stage machine, one method per stage.

Notes:
    This is the active-adversary variant of Bonawitz et al. (CCS 2017, "Practical Secure Aggregation for
    Privacy-Preserving Machine Learning", section 6) on the full graph. The client refuses, before revealing
    anything, every inconsistency DESIGN 4.1 lists: advertisements that do not verify against the pinned roster
    or were made for another model or parameters, or lack a self-mask seed commitment (DESIGN 4.4), duplicate
    ids or keys, ciphertexts moved between recipients or replayed, survivor sets that differ between silos
    (consistency check with >= t roster signatures), survivor/dropped sets that overlap or leave U2, and any
    request for the second share type of a peer.

    On the SecAgg+ graph (Bell et al., CCS 2020; :mod:`secagg.masking.graph`) the silo shares to and masks with
    its neighbours only, and every guard holds per neighbourhood: shares from non-neighbours are refused, the
    survivor and dropped sets must partition its own U2 within its neighbourhood, and it reveals a share of a
    peer only with t valid signatures on the identical survivor set *from that peer's closed neighbourhood* --
    the Bonawitz argument (t > (n + c)/2) applied to the k + 1 silos that hold the peer's shares.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg.errors import (
    DecryptionError,
    InvalidSignature,
    ProtocolError,
    ProtocolViolation,
    RoundAborted,
    SecAggError,
)
from secagg.hazmat import shamir
from secagg.hazmat.keys import (
    KEY_BYTES,
    NONCE_BYTES,
    RandomSource,
    agree,
    encode_fields,
    hkdf,
    new_x25519,
    open_sealed,
    public_bytes,
    seal,
    sign,
    verify,
)
from secagg.hazmat.prg import MaskStream, mask_key
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

P = ParamSpec("P")
R = TypeVar("R")


def _stage(
    stage: Stage,
) -> Callable[
    [Callable[Concatenate[SecAggClient, P], R]], Callable[Concatenate[SecAggClient, P], R]
]:
    """A stage method: refused outside ``stage``; any refusal inside it aborts the client for good.

    Notes:
        Aborting wipes the round's secrets, so a server that provoked a refusal cannot retry the stage with
        different inputs (for example a second U1 that would make the silo share a fresh seed).
    """

    def decorate(
        method: Callable[Concatenate[SecAggClient, P], R],
    ) -> Callable[Concatenate[SecAggClient, P], R]:
        def guarded(self: SecAggClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
            self._expect(stage)
            try:
                return method(self, *args, **kwargs)
            except SecAggError as exc:
                raise self._abort(exc) from exc

        functools.update_wrapper(guarded, method)
        return guarded

    return decorate


__all__ = [
    "SecAggClient",
    "clamped_scalar",
    "pairwise_mask_key",
    "self_mask_key",
    "share_aad",
    "share_key",
]

_SHARE_PLAINTEXT = 2 * shamir.SHARE_BYTES


def share_aad(session: bytes, sender: str, recipient: str) -> bytes:
    """AEAD associated data of a share ciphertext: session id || sender || recipient."""
    return encode_fields("share", session, sender, recipient)


def share_key(secret: bytes, session: bytes, sender: str, recipient: str) -> bytes:
    """AES-256-GCM key for the shares ``sender`` encrypts to ``recipient`` (one message per key)."""
    return hkdf(secret, purpose="share-encryption", info=encode_fields(session, sender, recipient))


def self_mask_key(seed: bytes, session: bytes, index: int) -> bytes:
    """PRG key of a silo's self mask PRG(b_u)."""
    return mask_key(seed, purpose="self-mask", session_id=session, pair=(index, index))


def clamped_scalar(private: bytes) -> bytes:
    """The RFC 7748 clamped form of a raw X25519 private key: the scalar X25519 actually multiplies by.

    Notes:
        A silo Shamir-shares its mask private key in this canonical form. X25519 clamps any 32 bytes (RFC 7748
        section 5), so 2^5 byte strings are the same key, and a holder can move a reconstruction onto another
        of them with a public shift (2^7 times the inverse of its Lagrange coefficient) that a public-key check
        alone would not notice. The server accepts only the clamped form of a dropped silo's key, so such a
        holder is named. Clamped scalars differ mod the group order (> 2^252), so at most one other clamped
        scalar has the same public key, the negation mod that order; it gives the same shared secrets, and
        reaching it takes knowing the key.
    """
    if len(private) != KEY_BYTES:
        raise ValueError("an X25519 private key is 32 bytes")
    scalar = bytearray(private)
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    return bytes(scalar)


def pairwise_mask_key(secret: bytes, session: bytes, a: int, b: int) -> bytes:
    """PRG key of the pairwise mask between roster indices ``a`` and ``b`` (order-independent)."""
    return mask_key(
        secret, purpose="pairwise-mask", session_id=session, pair=(min(a, b), max(a, b))
    )


class SecAggClient:
    """One silo in one round. Create a new instance per round: keys are fresh and never reused.

    Args:
        silo: this silo's id on the roster.
        signing_key: the silo's Ed25519 roster key.
        roster: the pinned, already verified roster.
        config: the round parameters the silo has checked against its own policy.
        rng: randomness source; ``os.urandom`` unless a test injects a seeded one.
    """

    def __init__(
        self,
        *,
        silo: str,
        signing_key: Ed25519PrivateKey,
        roster: Roster,
        config: RoundConfig,
        rng: RandomSource = os.urandom,
    ) -> None:
        if silo not in roster.members:
            raise ProtocolError(f"{silo} is not on the roster")
        if roster.key(silo) != public_bytes(signing_key):
            raise InvalidSignature(f"signing key does not match {silo}'s roster key")
        if roster.federation != config.federation or len(roster.members) != config.n:
            raise ProtocolError("round config does not match the roster")
        self.silo = silo
        self.stage = Stage.ADVERTISE_KEYS
        self._signing_key = signing_key
        self._roster = roster
        self._config = config
        self._rng = rng
        self._index = roster.index(silo)
        self._enc_key: X25519PrivateKey = new_x25519(rng)
        self._mask_key: X25519PrivateKey = new_x25519(rng)
        self._seed = b""
        self._session = b""
        self._own_ad: Advertisement | None = None
        self._advertisements: dict[str, Advertisement] = {}
        self._u2: tuple[str, ...] = ()
        self._opened: tuple[EncryptedShare, ...] | None = None  # the inbox, once opened
        self._held: dict[
            str, tuple[bytes, bytes]
        ] = {}  # peer -> (share of b_peer, share of mask sk_peer)
        self._signed_survivors: tuple[str, ...] = ()
        self._revealed: dict[str, str] = {}
        self._graph: CommunicationGraph | None = None

    def __repr__(self) -> str:
        return f"SecAggClient(silo={self.silo!r}, stage={self.stage.value!r})"

    @property
    def session_id(self) -> bytes:
        """The session id, known after stage 2 starts."""
        return self._session

    @property
    def graph(self) -> CommunicationGraph:
        """The round's communication graph, known after stage 2 starts (full unless ``graph_degree`` is set)."""
        if self._graph is None:
            raise ProtocolError(f"{self.silo}: the graph is known once U1 has been received")
        return self._graph

    @property
    def holds_secrets(self) -> bool:
        """Whether this client still holds secrets it could reveal: peers' Shamir shares or its self-mask seed.

        True from :meth:`advertise` (which draws the seed) until :meth:`unmask` hands out the shares; any refusal
        wipes them at once.
        """
        return bool(self._held) or bool(self._seed)

    def _expect(self, stage: Stage) -> None:
        if self.stage != stage:
            raise ProtocolError(
                f"{self.silo}: expected stage {stage.value}, client is in {self.stage.value}"
            )

    def _abort(self, error: Exception) -> Exception:
        self.stage = Stage.ABORTED
        self._held.clear()
        self._seed = b""
        return error

    # Stage 1 -------------------------------------------------------------------------------------------
    def advertise(self) -> Advertisement:
        """Stage 1: draw the self-mask seed b_u and publish two fresh X25519 public keys and a commitment to
        b_u, signed with the roster key.

        Notes:
            b_u is drawn here, before anything is sent, because the signed advertisement commits to it: the
            server checks the b_u it reconstructs in stage 5 against this commitment (DESIGN 4.4).
        """
        self._expect(Stage.ADVERTISE_KEYS)
        self._seed = self._rng(shamir.SECRET_BYTES)
        enc_public, mask_public = public_bytes(self._enc_key), public_bytes(self._mask_key)
        commitment = seed_commitment(self._config, self.silo, self._seed)
        payload = advertisement_payload(
            self._config, self.silo, enc_public, mask_public, commitment
        )
        ad = Advertisement(
            self.silo,
            enc_public,
            mask_public,
            sign(self._signing_key, payload),
            seed_commitment=commitment,
        )
        self._own_ad = ad
        self.stage = Stage.SHARE_KEYS
        return ad

    # Stage 2 -------------------------------------------------------------------------------------------
    @_stage(Stage.SHARE_KEYS)
    def share_keys(self, advertisements: Sequence[Advertisement]) -> ShareKeys:
        """Stage 2: verify U1 against the roster, then Shamir-share b_u (drawn in stage 1) and the mask key
        (in its clamped form, :func:`clamped_scalar`) to every member of its closed neighbourhood in U1 (every
        member on the full graph).

        Raises:
            ProtocolViolation: an advertisement is forged, duplicated, substituted or for another model.
            RoundAborted: U1 is too small to finish the round.
        """
        self._check_advertisements(advertisements)
        self._session = session_id(self._config, advertisements)
        self._graph = communication_graph(
            self._roster.members, self._config.graph_degree, self._session
        )
        members = sorted(self._graph.closed_neighbourhood(self.silo) & set(self._advertisements))
        if len(members) < self._config.local_required:
            raise RoundAborted(
                f"only {len(members)} silos of this silo's neighbourhood advertised keys; the round needs "
                f"{self._config.local_required}"
            )
        xs = [self._roster.index(m) for m in members]
        t = self._config.threshold
        seed_shares = shamir.split(self._seed, threshold=t, xs=xs, rng=self._rng)
        key_shares = shamir.split(
            clamped_scalar(self._mask_key.private_bytes_raw()), threshold=t, xs=xs, rng=self._rng
        )
        self._held[self.silo] = (seed_shares[self._index], key_shares[self._index])
        out = []
        for peer in members:
            if peer == self.silo:
                continue
            x = self._roster.index(peer)
            secret = agree(self._enc_key, self._advertisements[peer].enc_public)
            key = share_key(secret, self._session, self.silo, peer)
            plaintext = seed_shares[x] + key_shares[x]
            ciphertext = seal(key, plaintext, share_aad(self._session, self.silo, peer), self._rng)
            out.append(EncryptedShare(self.silo, peer, ciphertext))
        self.stage = Stage.MASKED_INPUT
        return ShareKeys(self.silo, tuple(out))

    def _check_advertisements(self, advertisements: Sequence[Advertisement]) -> None:
        ids = [ad.silo for ad in advertisements]
        if len(set(ids)) != len(ids):
            raise ProtocolViolation("duplicate silo id in the advertisement set")
        keys = [k for ad in advertisements for k in (ad.enc_public, ad.mask_public)]
        if len(set(keys)) != len(keys):
            raise ProtocolViolation("two advertisements share a public key")
        for ad in advertisements:
            if len(ad.enc_public) != KEY_BYTES or len(ad.mask_public) != KEY_BYTES:
                raise ProtocolViolation(
                    f"advertisement of {ad.silo!r} has a public key of the wrong length"
                )
            if len(ad.seed_commitment) != COMMITMENT_BYTES:
                raise ProtocolViolation(
                    f"advertisement of {ad.silo!r} lacks a {COMMITMENT_BYTES}-byte seed commitment"
                )
            if ad.silo not in self._roster.members:
                raise ProtocolViolation(f"advertisement from {ad.silo!r}, who is not on the roster")
            payload = advertisement_payload(
                self._config, ad.silo, ad.enc_public, ad.mask_public, ad.seed_commitment
            )
            try:
                verify(self._roster.key(ad.silo), ad.signature, payload)
            except InvalidSignature as exc:
                raise ProtocolViolation(
                    f"advertisement of {ad.silo} does not verify for this round, model and parameters"
                ) from exc
        own = [ad for ad in advertisements if ad.silo == self.silo]
        if self._own_ad is None or own != [self._own_ad]:
            raise ProtocolViolation("the server dropped or altered this silo's own advertisement")
        if len(advertisements) < self._config.required_survivors:
            raise RoundAborted(
                f"only {len(advertisements)} silos advertised keys; the round needs "
                f"{self._config.required_survivors}"
            )
        self._advertisements = {ad.silo: ad for ad in advertisements}

    # Stage 3 -------------------------------------------------------------------------------------------
    @_stage(Stage.MASKED_INPUT)
    def masked_input(
        self, inbox: Sequence[EncryptedShare], update: npt.NDArray[np.uint32]
    ) -> npt.NDArray[np.uint32]:
        """Stage 3: decrypt the shares addressed to this silo and return y = x + PRG(b_u) +- PRG(s_uv).

        ``update`` is the already quantized vector (see :class:`secagg.hazmat.quantize.Quantizer`).

        Raises:
            ProtocolViolation: a share was moved, replayed or tampered with, or U2 is inconsistent.
            RoundAborted: U2 is too small.
        """
        if update.dtype != np.uint32 or update.shape != (self._config.vector_length,):
            raise ValueError(
                f"update must be a uint32 vector of length {self._config.vector_length}"
            )
        if self._opened is None:
            self.open_inbox(inbox)
        elif tuple(inbox) != self._opened:
            raise ProtocolViolation("the inbox differs from the one this silo opened")
        y = update.copy()
        stream = MaskStream()
        stream.add(y, self_mask_key(self._seed, self._session, self._index))
        for peer in self._u2:
            if peer == self.silo:
                continue
            peer_index = self._roster.index(peer)
            secret = agree(self._mask_key, self._advertisements[peer].mask_public)
            key = pairwise_mask_key(secret, self._session, self._index, peer_index)
            stream.add(y, key, subtract=self._index > peer_index)
        self.stage = Stage.CONSISTENCY_CHECK
        return y

    @_stage(Stage.MASKED_INPUT)
    def open_inbox(self, inbox: Sequence[EncryptedShare]) -> tuple[str, ...]:
        """Stage 3, first half: decrypt and check the shares addressed to this silo; return U2.

        A silo calls this before it trains (DESIGN 4.4, train after admission): only shares that decrypt
        under the session's keys count, so a coordinator cannot make a silo spend budget for a cohort padded
        with undecryptable shares. :meth:`masked_input` then masks for exactly this inbox.

        Raises:
            ProtocolViolation: a share was moved, replayed or tampered with, or the inbox was opened before.
            RoundAborted: U2 is too small.
        """
        if self._opened is not None:
            raise ProtocolViolation("the inbox was already opened")
        self._opened = tuple(inbox)
        self._open_inbox(self._opened)
        return self._u2

    def _open_inbox(self, inbox: Sequence[EncryptedShare]) -> None:
        senders = [share.sender for share in inbox]
        if len(set(senders)) != len(senders):
            raise ProtocolViolation("two share ciphertexts from the same sender")
        nonces = {share.ciphertext[:NONCE_BYTES] for share in inbox}
        if len(nonces) != len(inbox):
            raise ProtocolViolation("a share ciphertext reuses a nonce (replay)")
        for share in inbox:
            if share.recipient != self.silo:
                raise ProtocolViolation(f"received a share addressed to {share.recipient}")
            if share.sender not in self._advertisements or share.sender == self.silo:
                raise ProtocolViolation(f"share from {share.sender!r}, who is not in U1")
            if share.sender not in self.graph.neighbours(self.silo):
                raise ProtocolViolation(f"share from {share.sender}, who is not a neighbour")
            secret = agree(self._enc_key, self._advertisements[share.sender].enc_public)
            key = share_key(secret, self._session, share.sender, self.silo)
            try:
                plaintext = open_sealed(
                    key, share.ciphertext, share_aad(self._session, share.sender, self.silo)
                )
            except DecryptionError as exc:
                raise ProtocolViolation(
                    f"share from {share.sender} does not decrypt for this silo"
                ) from exc
            if len(plaintext) != _SHARE_PLAINTEXT:
                raise ProtocolViolation(f"share from {share.sender} has the wrong length")
            self._held[share.sender] = (
                plaintext[: shamir.SHARE_BYTES],
                plaintext[shamir.SHARE_BYTES :],
            )
        self._u2 = tuple(sorted([*senders, self.silo]))
        if len(self._u2) < self._config.local_required:
            raise RoundAborted(
                f"only {len(self._u2)} silos shared keys; the round needs {self._config.local_required}"
            )

    def _local(self, silos: Sequence[str]) -> set[str]:
        """The silos of ``silos`` in this silo's closed neighbourhood (all of them on the full graph)."""
        if self.graph.is_full:
            return set(silos)
        return set(silos) & self.graph.closed_neighbourhood(self.silo)

    # Stage 4 -------------------------------------------------------------------------------------------
    @_stage(Stage.CONSISTENCY_CHECK)
    def sign_survivors(self, survivors: Sequence[str]) -> SurvivorSignature:
        """Stage 4: sign (session id, sorted U3) after checking U3 is a plausible survivor set."""
        self._check_survivors(survivors)
        self._signed_survivors = tuple(sorted(survivors))
        self.stage = Stage.UNMASK
        return SurvivorSignature(
            self.silo, sign(self._signing_key, survivors_payload(self._session, survivors))
        )

    def _check_survivors(self, survivors: Sequence[str]) -> None:
        if len(set(survivors)) != len(survivors):
            raise ProtocolViolation("repeated id in the survivor set")
        if self.silo not in survivors:
            raise ProtocolViolation("this silo submitted but is missing from the survivor set")
        mine = self._local(survivors)
        if not mine <= set(self._u2):
            raise ProtocolViolation("survivor set contains a silo outside U2")
        if self.graph.is_full:
            pass  # U3 is inside U2 = the neighbourhood; the cohort check below is the only one
        elif not set(survivors) <= set(self._advertisements):
            raise ProtocolViolation("survivor set contains a silo outside U1")
        elif len(mine) < self._config.local_required:
            raise RoundAborted(
                f"only {len(mine)} silos of this silo's neighbourhood submitted; the round "
                f"needs {self._config.local_required}"
            )
        if len(survivors) < self._config.required_survivors:
            raise RoundAborted(
                f"only {len(survivors)} silos submitted; the round needs {self._config.required_survivors}"
            )

    # Stage 5 -------------------------------------------------------------------------------------------
    @_stage(Stage.UNMASK)
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Stage 5: reveal exactly one share type per peer, after every guard of DESIGN 4.1 holds.

        Raises:
            ProtocolViolation: overlapping or inconsistent sets, too few valid signatures on the same U3, or a
                request for the other share type of a peer.
        """
        self._check_unmask(request)
        self_shares = {p: self._held[p][0] for p in request.survivors if p in self._u2}
        key_shares = {p: self._held[p][1] for p in request.dropped if p in self._u2}
        for peer in self_shares:
            self._revealed[peer] = "self-mask"
        for peer in key_shares:
            self._revealed[peer] = "mask-key"
        self._held.clear()
        self._seed = b""
        self.stage = Stage.DONE
        return UnmaskResponse(
            self.silo, MappingProxyType(self_shares), MappingProxyType(key_shares)
        )

    def _check_unmask(self, request: UnmaskRequest) -> None:
        survivors, dropped = request.survivors, request.dropped
        if len(set(survivors)) != len(survivors) or len(set(dropped)) != len(dropped):
            raise ProtocolViolation("repeated id in the survivor or dropped set")
        if set(survivors) & set(dropped):
            raise ProtocolViolation("a silo is reported both as survivor and as dropped")
        if tuple(sorted(survivors)) != self._signed_survivors:
            raise ProtocolViolation("the survivor set differs from the one this silo signed")
        if not self.graph.is_full and not set(survivors) | set(dropped) <= set(
            self._advertisements
        ):
            raise ProtocolViolation("survivors and dropped silos reach outside U1")
        if self._local([*survivors, *dropped]) != set(self._u2):
            raise ProtocolViolation("survivors and dropped silos do not partition U2")
        for peer in survivors:
            if self._revealed.get(peer, "self-mask") != "self-mask":
                raise ProtocolViolation(f"{peer}'s mask-key share was already revealed")
        for peer in dropped:
            if self._revealed.get(peer, "mask-key") != "mask-key":
                raise ProtocolViolation(f"{peer}'s self-mask share was already revealed")
        payload = survivors_payload(self._session, survivors)
        # only signatures from the neighbourhoods of the peers whose shares this silo holds count below, so
        # only those are verified (two hops on a SecAgg+ graph; everyone on the full graph)
        counted = frozenset().union(*(self.graph.closed_neighbourhood(p) for p in self._u2))
        valid = set()
        for signature in request.signatures:
            if (
                signature.silo in survivors
                and signature.silo in counted
                and signature.silo not in valid
            ):
                try:
                    verify(self._roster.key(signature.silo), signature.signature, payload)
                except InvalidSignature:
                    continue
                valid.add(signature.silo)
        for peer in self._u2:  # whose shares this silo is about to reveal
            signed = valid & self.graph.closed_neighbourhood(peer)
            if len(signed) < self._config.threshold:
                where = "" if self.graph.is_full else f" from {peer}'s neighbourhood"
                raise ProtocolViolation(
                    f"only {len(signed)} valid signatures on the survivor set{where}; "
                    f"need {self._config.threshold}"
                )
