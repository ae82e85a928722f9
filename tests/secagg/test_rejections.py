"""Rejection vectors: forged signatures, messages from another session, replayed nonces, low-order keys,
malformed lengths and out-of-order calls. Every one must raise, and an honest client that refuses stops."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from secagg import (
    Advertisement,
    DecryptionError,
    EncryptedShare,
    InvalidSignature,
    ProtocolError,
    ProtocolViolation,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    Stage,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.hazmat import shamir
from secagg.hazmat.keys import agree, new_x25519, open_sealed, seal, sign
from secagg.masking.messages import advertisement_payload, seed_commitment, session_id
from tests.secagg.harness import (
    Federation,
    RecordingRng,
    encrypt_share,
    finish_round,
    make_clients,
    make_config,
    make_federation,
    own_x25519_key,
    ring_sum,
    run_to_consistency,
    seeded_rng,
)

P25519 = 2**255 - 19

# Every u-coordinate of small order on Curve25519 or its twist (the libsodium / Wycheproof blocklist), in
# canonical form, as the non-canonical p, p+1 encodings, and with the ignored top bit set (RFC 7748 sec. 5).
_LOW_ORDER_U = {
    "0": 0,
    "1": 1,
    "order8-a": 325606250916557431795983626356110631294008115727848805560023387167927233504,
    "order8-b": 39382357235489614581723060781553021112529911719440698176882885853963445705823,
    "p-1": P25519 - 1,
    "p": P25519,
    "p+1": P25519 + 1,
}
LOW_ORDER_POINTS = {
    f"{name}{'+2^255' if high else ''}": (u + (1 << 255 if high else 0)).to_bytes(32, "little")
    for name, u in _LOW_ORDER_U.items()
    for high in (False, True)
}


def signed_ad(
    fed: Federation,
    config: RoundConfig,
    silo: str,
    enc: bytes,
    mask: bytes,
    commitment: bytes | None = None,
) -> Advertisement:
    """An advertisement a malicious (colluding) silo signs with its real roster key.

    ``commitment`` defaults to a well-formed commitment (to an all-zero seed), so only the keys are at issue.
    """
    if commitment is None:
        commitment = seed_commitment(config, silo, bytes(32))
    payload = advertisement_payload(config, silo, enc, mask, commitment)
    return Advertisement(silo, enc, mask, sign(fed.keys[silo], payload), commitment)


def flip(data: bytes, bit: int = 0) -> bytes:
    return bytes([data[0] ^ (1 << bit)]) + data[1:]


@pytest.fixture
def fed() -> Federation:
    return make_federation(4)


@pytest.fixture
def config(fed: Federation) -> RoundConfig:
    return make_config(fed, length=8)


def advertise(clients: dict[str, SecAggClient]) -> tuple[Advertisement, ...]:
    return tuple(c.advertise() for c in clients.values())


# --- Bad signatures -------------------------------------------------------------------------------------------


def test_roster_with_a_forged_signature_is_refused(fed: Federation) -> None:
    pinned = fed.roster.consortium_key
    forged = dataclasses.replace(fed.roster, signature=flip(fed.roster.signature))
    with pytest.raises(InvalidSignature):
        forged.verify(pinned)
    truncated = dataclasses.replace(fed.roster, signature=fed.roster.signature[:63])
    with pytest.raises(InvalidSignature):
        truncated.verify(pinned)


@pytest.mark.parametrize("field", ["signature", "enc_public", "mask_public", "seed_commitment"])
def test_advertisement_with_a_bad_signature_is_refused_by_clients_and_server(
    fed: Federation, config: RoundConfig, field: str
) -> None:
    clients = make_clients(fed, config)
    ads = list(advertise(clients))
    changes: dict[str, Any] = {field: flip(getattr(ads[1], field), 3)}
    ads[1] = dataclasses.replace(ads[1], **changes)
    victim = clients[fed.silos[0]]
    with pytest.raises(ProtocolViolation, match="does not verify"):
        victim.share_keys(ads)
    assert victim.stage is Stage.ABORTED
    server = SecAggServer(config=config, roster=fed.roster)
    with pytest.raises(ProtocolViolation):
        server.receive_advertisement(ads[1])


@pytest.mark.parametrize("length", [0, 31, 33])
def test_advertisement_without_a_32_byte_seed_commitment_is_refused_by_clients_and_server(
    fed: Federation, config: RoundConfig, length: int
) -> None:
    """Even signed by its silo: without a commitment the server could not check that silo's seed in stage 5."""
    clients = make_clients(fed, config)
    ads = list(advertise(clients))
    ads[1] = signed_ad(
        fed, config, ads[1].silo, ads[1].enc_public, ads[1].mask_public, b"\x07" * length
    )
    victim = clients[fed.silos[0]]
    with pytest.raises(ProtocolViolation, match="seed commitment"):
        victim.share_keys(ads)
    server = SecAggServer(config=config, roster=fed.roster)
    with pytest.raises(ProtocolError, match="seed commitment"):
        server.receive_advertisement(ads[1])


def test_survivor_signature_that_does_not_verify_is_refused(
    fed: Federation, config: RoundConfig
) -> None:
    tr = run_to_consistency(fed, config)
    survivors = tuple(fed.silos)
    sigs = [tr.clients[s].sign_survivors(survivors) for s in fed.silos]
    forged = dataclasses.replace(sigs[0], signature=flip(sigs[0].signature))
    # server side: refused when it arrives, and nothing is recorded
    with pytest.raises(ProtocolViolation, match="does not verify"):
        tr.server.receive_survivor_signature(forged)
    with pytest.raises(ProtocolViolation):  # a signature on another set is just as invalid
        tr.server.receive_survivor_signature(tr.signature(fed.silos[1], survivors[:3]))
    for sig in sigs[1:]:
        tr.server.receive_survivor_signature(sig)
    assert {s.silo for s in tr.server.close_consistency().signatures} == set(fed.silos[1:])
    # client side: exactly t signatures, one forged -> fewer than t valid -> refuse before revealing
    t = config.threshold
    request = UnmaskRequest(survivors, (), (forged, *sigs[1:t]))
    with pytest.raises(ProtocolViolation, match="valid signatures"):
        tr.clients[fed.silos[-1]].unmask(request)


# --- Wrong session: another round, federation, model or parameters -------------------------------------------


def other_configs(fed: Federation) -> dict[str, tuple[Federation, RoundConfig]]:
    """Same silos and roster keys, one field changed each time."""
    other_fed = make_federation(
        4, federation="other-fed"
    )  # same seed: same silo keys, another federation
    return {
        "round": (fed, make_config(fed, length=8, round_=1)),
        "federation": (other_fed, make_config(other_fed, length=8)),
        "model": (fed, make_config(fed, length=8, model=b"another model")),
        "params": (fed, make_config(fed, length=9)),
    }


@pytest.mark.parametrize("changed", ["round", "federation", "model", "params"])
def test_advertisement_from_another_session_is_refused(
    fed: Federation, config: RoundConfig, changed: str
) -> None:
    other_fed, other_config = other_configs(fed)[changed]
    replayed = make_clients(other_fed, other_config)[fed.silos[1]].advertise()
    clients = make_clients(fed, config)
    ads = [replayed if ad.silo == replayed.silo else ad for ad in advertise(clients)]
    with pytest.raises(ProtocolViolation, match="does not verify for this round"):
        clients[fed.silos[0]].share_keys(ads)
    server = SecAggServer(config=config, roster=fed.roster)
    with pytest.raises(ProtocolViolation):
        server.receive_advertisement(replayed)


@pytest.mark.parametrize("changed", ["round", "federation", "model", "params"])
def test_share_ciphertext_and_survivor_signature_from_another_session_are_refused(
    fed: Federation, config: RoundConfig, changed: str
) -> None:
    other_fed, other_config = other_configs(fed)[changed]
    # The *same* client seeds in both sessions: identical X25519 keys, so only the session binding differs.
    old = run_to_consistency(other_fed, other_config, seed=1)
    new = run_to_consistency(fed, config, seed=1, submit=())
    victim = fed.silos[0]
    assert (
        new.ads[1].enc_public == old.ads[1].enc_public
    )  # same keys; the session id is what differs
    stale = {s.sender: s for s in old.inbox[victim]}
    inbox = [stale[fed.silos[1]], *[s for s in new.inbox[victim] if s.sender != fed.silos[1]]]
    with pytest.raises(ProtocolViolation, match="does not decrypt"):
        new.clients[victim].masked_input(inbox, new.inputs[victim])

    fresh = run_to_consistency(fed, config, seed=1)
    survivors = tuple(fed.silos)
    old_sigs = [old.clients[s].sign_survivors(survivors) for s in fed.silos]
    own = fresh.clients[victim].sign_survivors(survivors)
    with pytest.raises(ProtocolViolation, match="valid signatures"):
        fresh.clients[victim].unmask(UnmaskRequest(survivors, (), (own, *old_sigs[1:])))


# --- Replayed nonce -------------------------------------------------------------------------------------------


def test_two_inbox_ciphertexts_with_the_same_nonce_are_refused(
    fed: Federation, config: RoundConfig
) -> None:
    tr = run_to_consistency(fed, config, submit=())
    victim = fed.silos[0]
    first, second, *rest = tr.inbox[victim]
    reused = dataclasses.replace(second, ciphertext=first.ciphertext[:12] + second.ciphertext[12:])
    with pytest.raises(ProtocolViolation, match="nonce"):
        tr.clients[victim].masked_input([first, reused, *rest], tr.inputs[victim])
    assert tr.clients[victim].stage is Stage.ABORTED


def test_the_same_ciphertext_twice_is_refused(fed: Federation, config: RoundConfig) -> None:
    tr = run_to_consistency(fed, config, submit=())
    victim = fed.silos[0]
    inbox = tr.inbox[victim]
    with pytest.raises(ProtocolViolation):
        tr.clients[victim].masked_input([*inbox, inbox[0]], tr.inputs[victim])


# --- Low-order X25519 keys ------------------------------------------------------------------------------------


def _x_only_double(point: tuple[int, int]) -> tuple[int, int]:
    x, z = point
    xx, zz = x * x % P25519, z * z % P25519
    return (xx - zz) ** 2 % P25519, 4 * x * z * (xx + 486662 * x * z + zz) % P25519


@pytest.mark.parametrize("name", sorted(LOW_ORDER_POINTS))
def test_low_order_points_are_of_small_order_and_refused_by_agree(name: str) -> None:
    u = int.from_bytes(LOW_ORDER_POINTS[name], "little") % (1 << 255) % P25519
    point = (u, 1)
    for _ in range(3):  # [8]P is the point at infinity (Z = 0): the vector list itself is right
        point = _x_only_double(point)
    assert point[1] == 0
    with pytest.raises(ProtocolViolation, match="low order"):
        agree(new_x25519(seeded_rng(1)), LOW_ORDER_POINTS[name])


@pytest.mark.parametrize("name", sorted(LOW_ORDER_POINTS))
def test_advertised_low_order_encryption_key_is_refused_at_agreement(
    fed: Federation, config: RoundConfig, name: str
) -> None:
    clients = make_clients(fed, config)
    ads = list(advertise(clients))
    colluder = ads[2]
    ads[2] = signed_ad(fed, config, colluder.silo, LOW_ORDER_POINTS[name], colluder.mask_public)
    with pytest.raises(ProtocolViolation, match="low order"):
        clients[fed.silos[0]].share_keys(ads)


def _round_with_low_order_mask_key(
    fed: Federation, config: RoundConfig, point: bytes
) -> tuple[dict[str, SecAggClient], dict[str, list[EncryptedShare]]]:
    """Stage 2 where silo 2 colludes: it signs an advertisement carrying ``point`` as its mask key.

    Its own client would refuse the forged advertisement, so the colluder encrypts its (well-formed) share
    ciphertexts by hand with its real share-encryption key, which it knows from its own randomness.
    """
    randomness: dict[str, RecordingRng] = {}
    clients = make_clients(fed, config, randomness=randomness)
    ads = list(advertise(clients))
    colluder = fed.silos[2]
    ads[2] = signed_ad(fed, config, colluder, ads[2].enc_public, point)
    inbox: dict[str, list[EncryptedShare]] = {s: [] for s in fed.silos}
    for silo, client in clients.items():
        if silo != colluder:
            for share in client.share_keys(ads).shares:
                inbox[share.recipient].append(share)
    session = session_id(config, ads)
    enc_key = own_x25519_key(randomness[colluder], ads[2].enc_public)
    rng = seeded_rng(98)
    for ad in ads:
        if ad.silo != colluder:
            plaintext = bytes(2 * shamir.SHARE_BYTES)
            inbox[ad.silo].append(encrypt_share(session, enc_key, colluder, ad, plaintext, rng))
    return clients, inbox


@pytest.mark.parametrize("name", sorted(LOW_ORDER_POINTS))
def test_advertised_low_order_mask_key_is_refused_at_agreement(
    fed: Federation, config: RoundConfig, name: str
) -> None:
    clients, inbox = _round_with_low_order_mask_key(fed, config, LOW_ORDER_POINTS[name])
    victim = fed.silos[0]
    with pytest.raises(ProtocolViolation, match="low order"):
        clients[victim].masked_input(inbox[victim], np.zeros(8, dtype=np.uint32))


def test_client_that_met_a_low_order_mask_key_stops(fed: Federation, config: RoundConfig) -> None:
    clients, inbox = _round_with_low_order_mask_key(fed, config, LOW_ORDER_POINTS["0"])
    victim = clients[fed.silos[0]]
    with pytest.raises(ProtocolViolation):
        victim.masked_input(inbox[victim.silo], np.zeros(8, dtype=np.uint32))
    assert victim.stage is Stage.ABORTED
    # ... and the server cannot retry with an inbox that leaves the offender out
    without = [s for s in inbox[victim.silo] if s.sender != fed.silos[2]]
    with pytest.raises(ProtocolError):
        victim.masked_input(without, np.zeros(8, dtype=np.uint32))


def test_client_that_met_a_low_order_encryption_key_stops(
    fed: Federation, config: RoundConfig
) -> None:
    clients = make_clients(fed, config)
    ads = list(advertise(clients))
    bad = signed_ad(fed, config, ads[2].silo, LOW_ORDER_POINTS["1"], ads[2].mask_public)
    victim = clients[fed.silos[0]]
    with pytest.raises(ProtocolViolation):
        victim.share_keys([*ads[:2], bad, *ads[3:]])
    assert victim.stage is Stage.ABORTED
    with pytest.raises(ProtocolError):
        victim.share_keys([*ads[:2], *ads[3:]])


# --- Malformed lengths ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 31, 33])
def test_advertised_key_of_the_wrong_length_is_refused_by_clients(
    fed: Federation, config: RoundConfig, length: int
) -> None:
    clients = make_clients(fed, config)
    ads = list(advertise(clients))
    ads[1] = signed_ad(fed, config, ads[1].silo, b"\x09" * length, ads[1].mask_public)
    with pytest.raises(ProtocolViolation, match="wrong length"):
        clients[fed.silos[0]].share_keys(ads)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_server_refuses_an_advertised_key_of_the_wrong_length(
    fed: Federation, config: RoundConfig, length: int
) -> None:
    clients = make_clients(fed, config)
    honest = clients[fed.silos[1]].advertise()
    server = SecAggServer(config=config, roster=fed.roster)
    with pytest.raises(ProtocolError):
        server.receive_advertisement(
            signed_ad(fed, config, honest.silo, b"\x09" * length, honest.mask_public)
        )


def test_advertisement_signature_of_the_wrong_length_is_refused(
    fed: Federation, config: RoundConfig
) -> None:
    clients = make_clients(fed, config)
    ads = list(advertise(clients))
    ads[1] = dataclasses.replace(ads[1], signature=ads[1].signature[:63])
    with pytest.raises(ProtocolViolation):
        clients[fed.silos[0]].share_keys(ads)


@pytest.mark.parametrize("cut", [0, 1, 12, 27, 28, 100])
def test_truncated_share_ciphertext_is_refused(
    fed: Federation, config: RoundConfig, cut: int
) -> None:
    tr = run_to_consistency(fed, config, submit=())
    victim = fed.silos[0]
    first, *rest = tr.inbox[victim]
    short = dataclasses.replace(first, ciphertext=first.ciphertext[:cut])
    with pytest.raises(ProtocolViolation):
        tr.clients[victim].masked_input([short, *rest], tr.inputs[victim])


@pytest.mark.parametrize("size", [0, 131, 133])
def test_share_plaintext_of_the_wrong_length_is_refused(
    fed: Federation, config: RoundConfig, size: int
) -> None:
    tr = run_to_consistency(fed, config, submit=())
    victim, sender = fed.silos[0], fed.silos[1]
    victim_ad = next(ad for ad in tr.ads if ad.silo == victim)
    # the (colluding) sender encrypts a wrong-size plaintext correctly to the victim
    plaintext = b"\x00" * size
    forged = encrypt_share(
        tr.session, tr.enc_key(sender), sender, victim_ad, plaintext, seeded_rng(99)
    )
    inbox = [forged]
    inbox += [s for s in tr.inbox[victim] if s.sender != sender]
    with pytest.raises(ProtocolViolation, match="wrong length"):
        tr.clients[victim].masked_input(inbox, tr.inputs[victim])


def test_aead_failures_are_opaque() -> None:
    key, aad = bytes(32), b"aad"
    blob = seal(key, b"secret share", aad, seeded_rng(3))
    messages = set()
    for bad_key, bad_blob, bad_aad in [
        (bytes([1]) + key[1:], blob, aad),  # wrong key
        (key, blob, b"other"),  # wrong associated data
        (key, blob[:-1] + bytes([blob[-1] ^ 1]), aad),  # tampered tag
        (key, flip(blob), aad),  # tampered nonce
        (key, blob[:20], aad),  # truncated below nonce + tag
        (key, b"", aad),
    ]:
        with pytest.raises(DecryptionError) as info:
            open_sealed(bad_key, bad_blob, bad_aad)
        messages.add(str(info.value))
    assert messages == {"ciphertext does not decrypt"}
    assert open_sealed(key, blob, aad) == b"secret share"


def test_client_refuses_an_update_of_the_wrong_shape(fed: Federation, config: RoundConfig) -> None:
    tr = run_to_consistency(fed, config, submit=())
    client = tr.clients[fed.silos[0]]
    bad_updates: list[Any] = [
        np.zeros(7, np.uint32),
        np.zeros(9, np.uint32),
        np.zeros(8, np.int64),
        np.zeros((8, 1), np.uint32),
    ]
    for bad in bad_updates:
        with pytest.raises(ValueError, match="uint32 vector of length 8"):
            client.masked_input(tr.inbox[client.silo], bad)
    # a local mistake reveals nothing and is not an attack: the client may try again
    assert client.stage is Stage.MASKED_INPUT


def test_server_refuses_malformed_masked_chunks(fed: Federation, config: RoundConfig) -> None:
    tr = run_to_consistency(fed, config, submit=())
    server, silo = tr.server, fed.silos[0]
    masked = {s: tr.clients[s].masked_input(tr.inbox[s], tr.inputs[s]) for s in fed.silos}
    malformed: list[tuple[int, Any]] = [
        (0, np.zeros(9, np.uint32)),  # too long
        (0, np.zeros(0, np.uint32)),  # empty
        (0, np.zeros(4, np.int32)),  # wrong dtype
        (0, np.zeros((2, 2), np.uint32)),  # not a vector
        (4, np.zeros(4, np.uint32)),  # gap
    ]
    for offset, chunk in malformed:
        with pytest.raises(ProtocolError):
            server.add_masked_chunk(silo, offset, chunk)
    assert server.received(silo) == 0
    server.add_masked_chunk(silo, 0, masked[silo][:5])
    assert server.received(silo) == 5
    with pytest.raises(ProtocolError, match=r"5 coordinates; expected 8"):
        server.finish_masked_input(silo)
    with pytest.raises(ProtocolError, match=r"not on the roster|not in U2"):
        server.add_masked_chunk("intruder", 0, np.ones(8, np.uint32))
    server.add_masked_chunk(silo, 5, masked[silo][5:])
    server.finish_masked_input(silo)
    assert server.received(silo) == 8
    with pytest.raises(ProtocolError, match="already submitted"):
        server.add_masked_chunk(silo, 0, np.ones(8, np.uint32))
    for other in fed.silos[1:]:
        server.add_masked_chunk(other, 0, masked[other])
        server.finish_masked_input(other)
    result = finish_round(server, tr.clients)
    # refused input changed nothing: the sum is exact
    np.testing.assert_array_equal(result.total, ring_sum(tr.inputs.values(), 8))


def test_a_broken_off_upload_is_discarded_from_the_sum(
    fed: Federation, config: RoundConfig
) -> None:
    tr = run_to_consistency(fed, config, submit=())
    server, silo = tr.server, fed.silos[0]
    masked = {s: tr.clients[s].masked_input(tr.inbox[s], tr.inputs[s]) for s in fed.silos}
    server.add_masked_chunk(silo, 0, masked[silo][:3])
    server.add_masked_chunk(silo, 3, np.full(2, 7, np.uint32))  # the stream broke inside this chunk
    assert server.received(silo) == 5
    with pytest.raises(ProtocolError, match="only the last added chunk"):
        server.discard_masked_chunk(silo, 0, masked[silo][:3])
    with pytest.raises(ProtocolError, match="unfinished uploads must be discarded first"):
        server.close_masked_input()
    server.discard_masked_chunk(silo, 3, np.full(2, 7, np.uint32))
    assert server.received(silo) == 3
    server.add_masked_chunk(silo, 3, masked[silo][3:])
    server.finish_masked_input(silo)
    for other in fed.silos[1:]:
        server.add_masked_chunk(other, 0, masked[other])
        server.finish_masked_input(other)
    result = finish_round(server, tr.clients)
    np.testing.assert_array_equal(result.total, ring_sum(tr.inputs.values(), 8))


@pytest.mark.parametrize(
    "share",
    [b"\x00" * 65, b"\x00" * 67, b"", ((1 << 521) - 1).to_bytes(66, "big"), b"\xff" * 66],
    ids=["65-bytes", "67-bytes", "empty", "equal-to-p", "above-p"],
)
def test_malformed_shamir_share_is_refused(share: bytes) -> None:
    shares = shamir.split(bytes(32), threshold=2, xs=[1, 2, 3], rng=seeded_rng(4))
    shares[1] = share
    with pytest.raises(ProtocolViolation, match="malformed"):
        shamir.reconstruct(shares, threshold=2)


def test_server_refuses_an_unmask_response_that_does_not_match_the_request(
    fed: Federation, config: RoundConfig
) -> None:
    tr = run_to_consistency(fed, config, submit=fed.silos[:3])
    survivors = tr.survivors
    for s in survivors:
        tr.server.receive_survivor_signature(tr.clients[s].sign_survivors(survivors))
    request = tr.server.close_consistency()
    assert request.dropped == (fed.silos[3],)
    r = tr.clients[survivors[0]].unmask(request)
    for bad in [
        UnmaskResponse(r.silo, r.self_mask_shares, {}),  # dropped silo's key share missing
        UnmaskResponse(r.silo, {}, r.mask_key_shares),  # survivors' seed shares missing
        UnmaskResponse(
            r.silo, {**r.self_mask_shares, fed.silos[3]: b"\x00" * 66}, r.mask_key_shares
        ),
        UnmaskResponse(fed.silos[3], r.self_mask_shares, r.mask_key_shares),  # not a signer
    ]:
        with pytest.raises(ProtocolError):
            tr.server.receive_unmask(bad)
    tr.server.receive_unmask(r)
    with pytest.raises(ProtocolError, match="already"):
        tr.server.receive_unmask(r)


# --- Stage machines -------------------------------------------------------------------------------------------


def test_client_refuses_every_out_of_order_call(fed: Federation, config: RoundConfig) -> None:
    client = make_clients(fed, config)[fed.silos[0]]
    zeros = np.zeros(8, np.uint32)
    request = UnmaskRequest((), (), ())
    for call in (
        lambda: client.share_keys([]),
        lambda: client.masked_input([], zeros),
        lambda: client.sign_survivors([]),
        lambda: client.unmask(request),
    ):
        with pytest.raises(ProtocolError, match="expected stage"):
            call()
    client.advertise()
    with pytest.raises(ProtocolError, match="expected stage"):
        client.advertise()  # one advertisement per round: never a second key pair


def test_aborted_client_refuses_everything_afterwards(fed: Federation, config: RoundConfig) -> None:
    tr = run_to_consistency(fed, config)
    client = tr.clients[fed.silos[0]]
    assert client.holds_secrets
    with pytest.raises(ProtocolViolation):
        client.sign_survivors([*fed.silos, fed.silos[0]])  # repeated id
    assert client.stage is Stage.ABORTED
    assert not client.holds_secrets  # the refusal wiped every share and the seed
    with pytest.raises(ProtocolError):
        client.sign_survivors(fed.silos)  # a corrected retry is refused too
    with pytest.raises(ProtocolError):
        client.unmask(UnmaskRequest(tuple(fed.silos), (), ()))


def test_server_refuses_out_of_order_calls_and_unknown_silos(
    fed: Federation, config: RoundConfig
) -> None:
    server = SecAggServer(config=config, roster=fed.roster)
    with pytest.raises(ProtocolError, match="expected stage"):
        server.close_share_keys()
    with pytest.raises(ProtocolError, match="expected stage"):
        server.close_unmask()
    clients = make_clients(fed, config)
    ad = clients[fed.silos[0]].advertise()
    server.receive_advertisement(ad)
    with pytest.raises(ProtocolError, match="already advertised"):
        server.receive_advertisement(ad)
    with pytest.raises(ProtocolError, match="not on the roster"):
        server.receive_advertisement(dataclasses.replace(ad, silo="intruder"))
    with pytest.raises(ProtocolError, match="expected stage"):
        server.receive_survivor_signature(SurvivorSignature(fed.silos[0], b"x" * 64))
