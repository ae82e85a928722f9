"""The coordinator's side of the masking protocol: an I/O-free stage machine, one method per stage.

The server never sees an individual input: it adds masked vectors into one running sum as their chunks
arrive (memory grows with the vector length, not the number of silos) and removes the masks with the
shares the survivors reveal. Deadlines live in the caller: ``close_*`` ends a stage with whoever arrived.

Notes:
    The server also checks what it can (roster signatures on advertisements, recipients of share ciphertexts,
    vector lengths, one submission per silo) so bad input is refused early with a clear error and changes no
    state. Its checks protect the round's liveness; the silos' own checks protect their privacy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg.errors import InvalidSignature, ProtocolError, ProtocolViolation, RoundAborted
from secagg.hazmat import shamir
from secagg.hazmat.keys import KEY_BYTES, agree, verify
from secagg.hazmat.prg import MaskStream
from secagg.masking.client import pairwise_mask_key, self_mask_key
from secagg.masking.config import RoundConfig
from secagg.masking.messages import (
    Advertisement,
    EncryptedShare,
    ShareKeys,
    Stage,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    advertisement_payload,
    session_id,
    survivors_payload,
)
from secagg.roster import Roster

__all__ = ["AggregateResult", "SecAggServer"]


@dataclass(frozen=True)
class AggregateResult:
    """The output of a round: the sum of the survivors' quantized inputs mod 2^32, and who is in it."""

    total: npt.NDArray[np.uint32]
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


class SecAggServer:
    """The server role for one round. ``config`` and ``roster`` are the coordinator's own."""

    def __init__(self, *, config: RoundConfig, roster: Roster) -> None:
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

    def __repr__(self) -> str:
        return f"SecAggServer(round={self.config.round}, stage={self.stage.value!r})"

    @property
    def session_id(self) -> bytes:
        """The session id, known once stage 1 has closed."""
        return self._session

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
        try:
            payload = advertisement_payload(self.config, ad.silo, ad.enc_public, ad.mask_public)
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
        self.stage = Stage.SHARE_KEYS
        return ads

    # Stage 2 -------------------------------------------------------------------------------------------
    def receive_shares(self, message: ShareKeys) -> None:
        """Accept one sender's share ciphertexts: exactly one for every other member of U1."""
        self._expect(Stage.SHARE_KEYS)
        if message.sender not in self._ads:
            raise ProtocolError(f"{message.sender!r} is not in U1")
        if message.sender in self._shares:
            raise ProtocolError(f"{message.sender} already sent its shares")
        recipients = [s.recipient for s in message.shares]
        expected = set(self._ads) - {message.sender}
        if len(recipients) != len(expected) or set(recipients) != expected:
            raise ProtocolError(
                f"{message.sender} must send exactly one share to every other member of U1"
            )
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
        if set(response.self_mask_shares) != set(self._request.survivors) or set(
            response.mask_key_shares
        ) != set(self._request.dropped):
            raise ProtocolError(f"unmask shares of {response.silo} do not match the request")
        for share in (*response.self_mask_shares.values(), *response.mask_key_shares.values()):
            if len(share) != shamir.SHARE_BYTES or int.from_bytes(share, "big") >= shamir.PRIME:
                raise ProtocolError(f"unmask shares of {response.silo} are malformed")
        self._responses[response.silo] = response

    def close_unmask(self) -> AggregateResult:
        """End stage 5: reconstruct the masks from >= t responses and return the unmasked sum."""
        self._expect(Stage.UNMASK)
        assert self._request is not None
        t = self.config.threshold
        if len(self._responses) < t:
            self.stage = Stage.ABORTED
            raise RoundAborted(f"only {len(self._responses)} silos sent unmask shares; need {t}")
        responders = sorted(self._responses)[:t]
        index = self._roster.index
        stream = MaskStream()
        total = self._total
        for silo in self._request.survivors:
            shares = {index(r): self._responses[r].self_mask_shares[silo] for r in responders}
            seed = shamir.reconstruct(shares, threshold=t)
            stream.add(total, self_mask_key(seed, self._session, index(silo)), subtract=True)
        for gone in self._request.dropped:
            shares = {index(r): self._responses[r].mask_key_shares[gone] for r in responders}
            private = X25519PrivateKey.from_private_bytes(shamir.reconstruct(shares, threshold=t))
            if private.public_key().public_bytes_raw() != self._ads[gone].mask_public:
                raise ProtocolViolation(
                    f"reconstructed mask key of {gone} does not match its advertisement"
                )
            for silo in self._request.survivors:
                secret = agree(private, self._ads[silo].mask_public)
                key = pairwise_mask_key(secret, self._session, index(silo), index(gone))
                # the survivor added +PRG when its index is lower, -PRG otherwise; undo that
                stream.add(total, key, subtract=index(silo) < index(gone))
        self._responses.clear()
        self.stage = Stage.DONE
        return AggregateResult(total, self._request.survivors, self._request.dropped)
