"""Drives one in-process round of the masking protocol for tests (not a mock: the real roles, no I/O)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg import AggregateResult, Quantizer, Roster, RoundConfig, SecAggClient, SecAggServer
from secagg.config import minimum_threshold


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    """A deterministic byte source for tests (never for production)."""
    generator = random.Random(seed)
    return lambda n: generator.randbytes(n)


@dataclass
class Federation:
    roster: Roster
    keys: dict[str, Ed25519PrivateKey]

    @property
    def silos(self) -> list[str]:
        return list(self.roster.members)


def make_federation(n: int, *, seed: int = 0, federation: str = "fed") -> Federation:
    rng = seeded_rng(seed)
    keys = {f"silo-{i:02d}": Ed25519PrivateKey.from_private_bytes(rng(32)) for i in range(n)}
    consortium = Ed25519PrivateKey.from_private_bytes(rng(32))
    members = {s: k.public_key().public_bytes_raw() for s, k in keys.items()}
    return Federation(
        Roster.create(federation=federation, members=members, consortium_key=consortium), keys
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
    )


def run_round(
    fed: Federation,
    config: RoundConfig,
    inputs: dict[str, np.ndarray],
    *,
    drop: dict[str, Collection[str]] | None = None,
    seed: int = 1,
    chunk: int = 1000,
) -> AggregateResult:
    """One honest round; ``drop`` maps a stage name to silos that vanish before sending that stage's message."""
    drop = drop or {}
    gone: set[str] = set()
    server = SecAggServer(config=config, roster=fed.roster)
    clients = {
        s: SecAggClient(
            silo=s,
            signing_key=fed.keys[s],
            roster=fed.roster,
            config=config,
            rng=seeded_rng(seed + i),
        )
        for i, s in enumerate(fed.silos)
    }

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
    survivors = server.close_masked_input()
    for s in alive("consistency"):
        if s in survivors:
            server.receive_survivor_signature(clients[s].sign_survivors(survivors))
    request = server.close_consistency()
    signers = {sig.silo for sig in request.signatures}
    for s in alive("unmask"):
        if s in signers:
            server.receive_unmask(clients[s].unmask(request))
    return server.close_unmask()
