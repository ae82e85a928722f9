"""Attestations: exact round trip, deterministic signed bytes, signatures, epsilon re-check."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.accounting import (
    DOMAIN_PREFIX,
    DP_SGD_MECHANISM,
    MechanismStep,
    PrivacyAttestation,
    PrivacyBudget,
    check_attestation,
    recompute_epsilon,
    verify_attestation,
)
from dp.errors import (
    AttestationError,
    AttestationRejected,
    InvalidAttestationSignature,
    InvalidPrivacyParameters,
)

SESSION = "ab" * 32
BEFORE = [MechanismStep(noise_multiplier=1.3, sample_rate=0.2, steps=10)] * 2


def make(**overrides: object) -> PrivacyAttestation:
    fields: dict[str, object] = {
        "federation": "hospitals-2025",
        "round": 2,
        "session_id": SESSION,
        "silo": "silo-a",
        "mechanism": DP_SGD_MECHANISM,
        "noise_multiplier": 1.3,
        "sample_rate": 0.2,
        "steps": 10,
        "max_grad_norm": 1.0,
        "accountant": "rdp/secagg-0.1.0",
        "epsilon": recompute_epsilon([*BEFORE, BEFORE[0]], 1e-5),
        "delta": 1e-5,
        "library_versions": {"opacus": "1.6.0", "torch": "2.13.0"},
    }
    fields.update(overrides)
    return PrivacyAttestation(**fields)  # type: ignore[arg-type]


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=50, deadline=None)
@given(
    sigma=finite.filter(lambda x: x > 0),
    rate=st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
    clip=finite.filter(lambda x: x > 0),
    epsilon=finite.filter(lambda x: x >= 0),
    delta=st.floats(min_value=0.0, max_value=1.0, exclude_min=True, exclude_max=True),
)
def test_round_trip_is_exact_through_json(
    sigma: float, rate: float, clip: float, epsilon: float, delta: float
) -> None:
    att = make(
        noise_multiplier=sigma, sample_rate=rate, max_grad_norm=clip, epsilon=epsilon, delta=delta
    )
    again = PrivacyAttestation.from_dict(json.loads(json.dumps(att.to_dict())))
    assert again == att
    assert again.signing_payload() == att.signing_payload()


def test_signing_payload_is_prefixed_deterministic_compact_sorted() -> None:
    att = make()
    payload = att.signing_payload()
    assert payload.startswith(DOMAIN_PREFIX)
    body = payload[len(DOMAIN_PREFIX) :].decode("ascii")
    assert body == json.dumps(att.to_dict(), sort_keys=True, separators=(",", ":"))
    shuffled = make(library_versions={"torch": "2.13.0", "opacus": "1.6.0"})
    assert shuffled.signing_payload() == payload


@pytest.mark.parametrize(
    "overrides",
    [
        {"session_id": "AB" * 32},
        {"session_id": "ab" * 31},
        {"round": -1},
        {"round": True},
        {"silo": ""},
        {"epsilon": -1.0},
        {"epsilon": math.inf},
        {"max_grad_norm": 0.0},
        {"noise_multiplier": 0.0},
        {"sample_rate": 1.5},
        {"steps": 0},
        {"delta": 1.0},
        {"library_versions": {"torch": 2}},
    ],
)
def test_invalid_fields_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidPrivacyParameters):
        make(**overrides)


def test_from_dict_refuses_missing_and_extra_fields() -> None:
    data = make().to_dict()
    with pytest.raises(InvalidPrivacyParameters):
        PrivacyAttestation.from_dict({**data, "extra": 1})
    del data["epsilon"]
    with pytest.raises(InvalidPrivacyParameters):
        PrivacyAttestation.from_dict(data)


def test_signature_verifies_and_every_forgery_fails() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    att = make()
    signature = key.sign(att.signing_payload())
    verify_attestation(att, signature, public)

    lowered = dataclasses.replace(att, epsilon=att.epsilon / 2)
    other = Ed25519PrivateKey.generate()
    without_prefix = key.sign(att.signing_payload()[len(DOMAIN_PREFIX) :])
    cases = [
        (lowered, signature, public),  # edited after signing
        (att, other.sign(att.signing_payload()), public),  # signed by someone else
        (att, signature, other.public_key().public_bytes_raw()),  # wrong roster key
        (att, without_prefix, public),  # signature made without the domain prefix
        (att, signature[:-1], public),  # truncated signature
        (att, signature, public[:-1]),  # malformed key
    ]
    for attestation, sig, pub in cases:
        with pytest.raises(InvalidAttestationSignature):
            verify_attestation(attestation, sig, pub)


def test_honest_claim_passes_recheck() -> None:
    check = check_attestation(make(), BEFORE)
    assert check.ok
    assert check.recomputed_epsilon == check.claimed_epsilon


def test_under_reported_epsilon_is_refused() -> None:
    honest = make()
    liar = make(epsilon=honest.epsilon * 0.9)
    with pytest.raises(AttestationRejected, match="claimed epsilon") as refused:
        check_attestation(liar, BEFORE)
    assert refused.value.check.under_reported
    # A claim that forgets earlier rounds (a fresh engine per round) is under-reporting too.
    forgetful = make(epsilon=recompute_epsilon([BEFORE[0]], 1e-5))
    with pytest.raises(AttestationRejected):
        check_attestation(forgetful, BEFORE)


def test_non_strict_mode_flags_instead_of_raising() -> None:
    liar = make(epsilon=0.0)
    check = check_attestation(liar, BEFORE, strict=False)
    assert not check.ok
    assert check.under_reported
    assert not check.over_ceiling
    assert check.to_dict()["under_reported"] is True


def test_over_reporting_is_conservative_and_accepted() -> None:
    assert check_attestation(make(epsilon=make().epsilon + 1.0), BEFORE).ok


def test_ceiling() -> None:
    att = make()
    check_attestation(att, BEFORE, ceiling=PrivacyBudget(epsilon=att.epsilon + 0.01, delta=1e-5))
    with pytest.raises(AttestationRejected, match="ceiling") as refused:
        check_attestation(
            att, BEFORE, ceiling=PrivacyBudget(epsilon=att.epsilon - 0.01, delta=1e-5)
        )
    assert refused.value.check.over_ceiling
    with pytest.raises(AttestationRejected):
        check_attestation(att, BEFORE, ceiling=PrivacyBudget(epsilon=100.0, delta=1e-6))


def test_unknown_mechanism_cannot_be_rechecked() -> None:
    with pytest.raises(AttestationError, match="mechanism"):
        check_attestation(make(mechanism="laplace"), BEFORE)
