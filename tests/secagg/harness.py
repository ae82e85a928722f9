"""Drives one in-process round of the masking protocol for tests (not a mock: the real roles, no I/O).

``run_round`` plays an honest server end to end. ``run_to_consistency`` routes stages 1-3 through the real
:class:`SecAggServer` and then hands the live clients to the test, which plays a *malicious* server for
stages 4-5; ``attacker_unmask`` is what that server would do with whatever shares it extracted.

For a *malicious member silo* (DESIGN 2, 4.4): ``unmask_responses`` plays stage 4 honestly and returns every
survivor's stage-5 response unsent, ``tampered``/``moved`` make the responses a lying holder would send
(``lagrange_at_zero`` gives the public coefficient whose inverse shifts a reconstruction by exactly 1), and
``unchecked_unmask`` is the positive control: the server's stage 5 as it was before the seed commitment (the
first t responses, nothing checked).

Tests see the clients only through their public API. What a *colluding* silo knows beyond that (its own
X25519 keys, hence the shares addressed to it) comes from its own randomness: every client draws from a
:class:`RecordingRng`, and :func:`own_x25519_key` finds the key among the draws.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg import (
    Advertisement,
    AggregateResult,
    EncryptedShare,
    Quantizer,
    Roster,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.hazmat import shamir
from secagg.hazmat.keys import agree, open_sealed, public_bytes, seal, sign
from secagg.hazmat.prg import MaskStream
from secagg.masking.client import pairwise_mask_key, self_mask_key, share_aad, share_key
from secagg.masking.config import minimum_threshold
from secagg.masking.messages import survivors_payload

U32 = npt.NDArray[np.uint32]


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    """A deterministic byte source for tests (never for production)."""
    generator = random.Random(seed)
    return lambda n: generator.randbytes(n)


class RecordingRng:
    """:func:`seeded_rng` that also keeps every draw: what a silo knows of its own randomness."""

    def __init__(self, seed: int) -> None:
        self._generator = random.Random(seed)
        self.draws: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        data = self._generator.randbytes(n)
        self.draws.append(data)
        return data


def own_x25519_key(rng: RecordingRng, public: bytes) -> X25519PrivateKey:
    """The X25519 private key behind ``public`` among a silo's draws (a colluding silo reads its own keys)."""
    for draw in rng.draws:
        if len(draw) == 32:
            key = X25519PrivateKey.from_private_bytes(draw)
            if public_bytes(key) == public:
                return key
    raise LookupError("no draw of this randomness is the private key of that public key")


def encrypt_share(
    session: bytes,
    sender_key: X25519PrivateKey,
    sender: str,
    recipient: Advertisement,
    plaintext: bytes,
    rng: Callable[[int], bytes],
) -> EncryptedShare:
    """A share ciphertext that a colluding ``sender`` encrypts by hand, with any plaintext, to ``recipient``."""
    key = share_key(agree(sender_key, recipient.enc_public), session, sender, recipient.silo)
    aad = share_aad(session, sender, recipient.silo)
    return EncryptedShare(sender, recipient.silo, seal(key, plaintext, aad, rng))


@dataclass
class Federation:
    roster: Roster
    keys: dict[str, Ed25519PrivateKey]
    consortium: Ed25519PrivateKey

    @property
    def silos(self) -> list[str]:
        return list(self.roster.members)


def make_federation(n: int, *, seed: int = 0, federation: str = "fed") -> Federation:
    rng = seeded_rng(seed)
    keys = {f"silo-{i:02d}": Ed25519PrivateKey.from_private_bytes(rng(32)) for i in range(n)}
    consortium = Ed25519PrivateKey.from_private_bytes(rng(32))
    members = {s: k.public_key().public_bytes_raw() for s, k in keys.items()}
    return Federation(
        Roster.create(federation=federation, members=members, consortium_key=consortium),
        keys,
        consortium,
    )


def make_config(
    fed: Federation,
    *,
    length: int,
    round_: int = 0,
    threshold: int | None = None,
    collusion: int = 0,
    bits: int = 16,
    min_cohort: int = 2,
    model: bytes = b"model",
    graph_degree: int = 0,
) -> RoundConfig:
    n = len(fed.roster.members)
    return RoundConfig(
        federation=fed.roster.federation,
        round=round_,
        model_hash=hashlib.sha256(model).digest(),
        vector_length=length,
        quantizer=Quantizer(clip=1.0, bits=bits, max_silos=max(n, 2)),
        n=n,
        threshold=threshold if threshold is not None else minimum_threshold(n, collusion),
        collusion=collusion,
        min_cohort=min(min_cohort, n),
        graph_degree=graph_degree,
    )


def make_clients(
    fed: Federation,
    config: RoundConfig,
    *,
    seed: int = 1,
    randomness: dict[str, RecordingRng] | None = None,
) -> dict[str, SecAggClient]:
    """One client per roster member, each with its own seeded randomness (kept in ``randomness`` if given)."""
    rngs = {s: RecordingRng(seed + i) for i, s in enumerate(fed.silos)}
    if randomness is not None:
        randomness.update(rngs)
    return {
        s: SecAggClient(
            silo=s, signing_key=fed.keys[s], roster=fed.roster, config=config, rng=rngs[s]
        )
        for s in fed.silos
    }


def random_inputs(fed: Federation, length: int, *, seed: int = 0) -> dict[str, U32]:
    """Arbitrary ring elements (the protocol must sum any uint32 vectors exactly, not just small ones)."""
    gen = np.random.default_rng(seed)
    return {
        s: gen.integers(0, 1 << 32, size=length, dtype=np.uint64).astype(np.uint32)
        for s in fed.silos
    }


def ring_sum(vectors: Iterable[U32], length: int) -> U32:
    """The exact sum mod 2^32, computed independently of the protocol."""
    total = np.zeros(length, dtype=np.uint64)
    for v in vectors:
        total = (total + v.astype(np.uint64)) % (1 << 32)
    return total.astype(np.uint32)


def run_round(
    fed: Federation,
    config: RoundConfig,
    inputs: dict[str, U32],
    *,
    drop: Mapping[str, Collection[str]] | None = None,
    seed: int = 1,
    chunk: int = 1000,
) -> AggregateResult:
    """One honest round; ``drop`` maps a stage name to silos that vanish before sending that stage's message."""
    drop = drop or {}
    gone: set[str] = set()
    server = SecAggServer(config=config, roster=fed.roster)
    clients = make_clients(fed, config, seed=seed)

    def alive(stage: str) -> list[str]:
        gone.update(drop.get(stage, ()))
        return [s for s in fed.silos if s not in gone]

    for s in alive("advertise"):
        server.receive_advertisement(clients[s].advertise())
    ads = server.close_advertise()
    for s in alive("share_keys"):
        server.receive_shares(clients[s].share_keys(ads))
    inbox = server.close_share_keys()
    for s in alive("masked_input"):
        y = clients[s].masked_input(inbox[s], inputs[s])
        for start in range(0, y.shape[0], chunk):
            server.add_masked_chunk(s, start, y[start : start + chunk])
        server.finish_masked_input(s)
    return finish_round(server, clients, alive)


def finish_round(
    server: SecAggServer,
    clients: Mapping[str, SecAggClient],
    alive: Callable[[str], Iterable[str]] | None = None,
) -> AggregateResult:
    """Close stage 3 and play stages 4-5 honestly; ``alive(stage)`` names who is still there (default: all)."""
    present = alive if alive is not None else (lambda stage: list(clients))
    survivors = server.close_masked_input()
    for s in present("consistency"):
        if s in survivors:
            server.receive_survivor_signature(clients[s].sign_survivors(survivors))
    request = server.close_consistency()
    signers = {sig.silo for sig in request.signatures}
    for s in present("unmask"):
        if s in signers:
            server.receive_unmask(clients[s].unmask(request))
    return server.close_unmask()


@dataclass
class Transcript:
    """What an honest server routed in stages 1-3; the clients wait in the consistency-check stage."""

    fed: Federation
    config: RoundConfig
    server: SecAggServer
    clients: dict[str, SecAggClient]
    ads: tuple[Advertisement, ...]
    inbox: Mapping[str, tuple[EncryptedShare, ...]]
    inputs: dict[str, U32]
    masked: dict[str, U32]
    survivors: tuple[str, ...]  # U3 as the server fixed it; empty when too few silos submitted
    randomness: dict[str, RecordingRng]

    @property
    def session(self) -> bytes:
        return next(iter(self.clients.values())).session_id

    def enc_key(self, silo: str) -> X25519PrivateKey:
        """``silo``'s share-encryption key, as that silo (colluding) knows it."""
        ad = next(ad for ad in self.ads if ad.silo == silo)
        return own_x25519_key(self.randomness[silo], ad.enc_public)

    def held_shares(self, holder: str, owner: str) -> tuple[bytes, bytes]:
        """The shares of ``owner``'s self-mask seed and mask key that ``holder`` received in stage 2.

        What a colluding ``holder`` hands the server: it opens ``owner``'s ciphertext with its own key.
        """
        owner_ad = next(ad for ad in self.ads if ad.silo == owner)
        share = next(s for s in self.inbox[holder] if s.sender == owner)
        key = share_key(
            agree(self.enc_key(holder), owner_ad.enc_public), self.session, owner, holder
        )
        plaintext = open_sealed(key, share.ciphertext, share_aad(self.session, owner, holder))
        return plaintext[: shamir.SHARE_BYTES], plaintext[shamir.SHARE_BYTES :]

    def signature(self, silo: str, survivors: Iterable[str]) -> SurvivorSignature:
        """A roster signature on a survivor set, as a colluding silo would produce for any set it is asked."""
        payload = survivors_payload(self.session, tuple(survivors))
        return SurvivorSignature(silo, sign(self.fed.keys[silo], payload))


def run_to_consistency(
    fed: Federation,
    config: RoundConfig,
    *,
    seed: int = 1,
    submit: Collection[str] | None = None,
    inputs: dict[str, U32] | None = None,
) -> Transcript:
    """Stages 1-3 through the real server; only the silos in ``submit`` (default: all) send masked input.

    The server has closed stage 3 (and waits for survivor signatures) when enough silos submitted.
    """
    server = SecAggServer(config=config, roster=fed.roster)
    randomness: dict[str, RecordingRng] = {}
    clients = make_clients(fed, config, seed=seed, randomness=randomness)
    inputs = inputs if inputs is not None else random_inputs(fed, config.vector_length, seed=seed)
    for client in clients.values():
        server.receive_advertisement(client.advertise())
    ads = server.close_advertise()
    for client in clients.values():
        server.receive_shares(client.share_keys(ads))
    inbox = server.close_share_keys()
    masked = {
        s: clients[s].masked_input(inbox[s], inputs[s])
        for s in (fed.silos if submit is None else submit)
    }
    for silo, y in masked.items():
        server.add_masked_chunk(silo, 0, y)
        server.finish_masked_input(silo)
    survivors = server.close_masked_input() if len(masked) >= config.required_survivors else ()
    return Transcript(
        fed, config, server, clients, ads, inbox, inputs, masked, survivors, randomness
    )


def attacker_unmask(
    tr: Transcript,
    victim: str,
    responses: Iterable[UnmaskResponse],
    *,
    colluders: Collection[str] = (),
) -> U32 | None:
    """The malicious server's attempt to strip every mask off ``victim``'s masked vector.

    It pools every share honest silos revealed plus both share types held by colluding silos, reconstructs
    the victim's self-mask seed b_u and mask private key when it has ``t`` shares of each, and removes
    PRG(b_u) and every pairwise mask. Returns the recovered input, or ``None`` when it lacks ``t`` shares of
    either secret (then, by Shamir's perfect secrecy, it holds no information about that secret).
    """
    t, index = tr.config.threshold, tr.fed.roster.index
    seed_shares: dict[int, bytes] = {}
    key_shares: dict[int, bytes] = {}
    for response in responses:
        if victim in response.self_mask_shares:
            seed_shares[index(response.silo)] = response.self_mask_shares[victim]
        if victim in response.mask_key_shares:
            key_shares[index(response.silo)] = response.mask_key_shares[victim]
    for colluder in colluders:
        # A colluding silo hands over both shares it holds for the victim (its own memory).
        seed_shares[index(colluder)], key_shares[index(colluder)] = tr.held_shares(colluder, victim)
    if len(seed_shares) < t or len(key_shares) < t:
        return None
    seed = shamir.reconstruct(seed_shares, threshold=t)
    mask_key = X25519PrivateKey.from_private_bytes(shamir.reconstruct(key_shares, threshold=t))
    ads = {ad.silo: ad for ad in tr.ads}
    y = tr.masked[victim].copy()
    stream = MaskStream()
    stream.add(y, self_mask_key(seed, tr.session, index(victim)), subtract=True)
    for share in tr.inbox[victim]:  # the victim masked with every sender of its inbox (its U2)
        secret = agree(mask_key, ads[share.sender].mask_public)
        key = pairwise_mask_key(secret, tr.session, index(victim), index(share.sender))
        stream.add(y, key, subtract=index(victim) < index(share.sender))
    return y


# --- a malicious member silo in stage 5 -----------------------------------------------------------------------
def unmask_responses(tr: Transcript) -> tuple[UnmaskRequest, dict[str, UnmaskResponse]]:
    """Stage 4 through the real server with every survivor signing; then each survivor's honest stage-5
    response, not yet sent (a test sends them, some tampered)."""
    for s in tr.survivors:
        tr.server.receive_survivor_signature(tr.clients[s].sign_survivors(tr.survivors))
    request = tr.server.close_consistency()
    return request, {s: tr.clients[s].unmask(request) for s in tr.survivors}


def lagrange_at_zero(xs: Sequence[int], x: int) -> int:
    """The public Lagrange coefficient at 0 of x-coordinate ``x`` in the reconstructing subset ``xs``."""
    p = shamir.PRIME
    numerator, denominator = 1, 1
    for other in xs:
        if other != x:
            numerator = numerator * other % p
            denominator = denominator * (other - x) % p
    return numerator * pow(denominator, -1, p) % p


def moved(share: bytes, delta: int) -> bytes:
    """``share`` plus ``delta`` in GF(2^521 - 1): what a lying holder reveals instead."""
    value = (int.from_bytes(share, "big") + delta) % shamir.PRIME
    return value.to_bytes(shamir.SHARE_BYTES, "big")


def garbage_share(rng: Callable[[int], bytes]) -> bytes:
    """A uniformly random, well-formed share (the server cannot refuse it as malformed)."""
    return (int.from_bytes(rng(80), "big") % shamir.PRIME).to_bytes(shamir.SHARE_BYTES, "big")


def tampered(
    response: UnmaskResponse,
    *,
    self_mask: Mapping[str, bytes] | None = None,
    mask_key: Mapping[str, bytes] | None = None,
) -> UnmaskResponse:
    """``response`` with some of its self-mask and mask-key shares replaced (peer -> share)."""
    return UnmaskResponse(
        response.silo,
        {**response.self_mask_shares, **(self_mask or {})},
        {**response.mask_key_shares, **(mask_key or {})},
    )


def first_t(tr: Transcript, responders: Iterable[str]) -> list[str]:
    """The t responders an unchecked server reconstructs from: the first t by roster index."""
    return sorted(responders, key=tr.fed.roster.index)[: tr.config.threshold]


def unchecked_unmask(
    tr: Transcript, request: UnmaskRequest, responses: Mapping[str, UnmaskResponse]
) -> U32:
    """The positive control: stage 5 as the server did it before the seed commitment.

    The sum of the survivors' masked vectors, unmasked with secrets reconstructed from the first t responses
    and never checked (a mask key is used as it comes out; a wrong seed is just another seed).
    """
    t, index = tr.config.threshold, tr.fed.roster.index
    used = first_t(tr, responses)
    ads = {ad.silo: ad for ad in tr.ads}
    total = ring_sum((tr.masked[s] for s in request.survivors), tr.config.vector_length)
    stream = MaskStream()
    for silo in request.survivors:
        shares = {index(r): responses[r].self_mask_shares[silo] for r in used}
        seed = shamir.reconstruct(shares, threshold=t)
        stream.add(total, self_mask_key(seed, tr.session, index(silo)), subtract=True)
    for gone in request.dropped:
        shares = {index(r): responses[r].mask_key_shares[gone] for r in used}
        private = X25519PrivateKey.from_private_bytes(shamir.reconstruct(shares, threshold=t))
        for silo in request.survivors:
            secret = agree(private, ads[silo].mask_public)
            key = pairwise_mask_key(secret, tr.session, index(silo), index(gone))
            stream.add(total, key, subtract=index(silo) < index(gone))
    return total
