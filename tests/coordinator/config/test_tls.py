"""``check_tls``: a bad or expired certificate is one line naming the file and the fix, before gRPC sees it."""

from __future__ import annotations

import datetime

import pytest

from coordinator.config import TLSPaths
from coordinator.config.tls import check_tls
from coordinator.errors import ConfigError
from coordinator.pki import ConsortiumPaths, tls_key_pem


def silo_tls(consortium: ConsortiumPaths, silo: str = "silo-a") -> TLSPaths:
    paths = consortium.silos[silo]
    return TLSPaths(ca=paths.ca_cert, cert=paths.cert, key=paths.key)


def test_a_consortium_s_own_files_pass(consortium: ConsortiumPaths) -> None:
    check_tls(silo_tls(consortium), role="silo silo-a")
    check_tls(
        TLSPaths(
            ca=consortium.ca_cert, cert=consortium.coordinator_cert, key=consortium.coordinator_key
        ),
        role="coordinator",
    )


def test_an_expired_certificate_names_the_file_and_the_date(consortium: ConsortiumPaths) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=400)
    with pytest.raises(ConfigError) as refused:
        check_tls(silo_tls(consortium), role="silo silo-a", now=later)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("the CA certificate ") or message.startswith(
        "the silo silo-a certificate "
    )
    assert " expired on 20" in message and message.endswith(
        "ask the consortium CA for a new one (secagg pki) and install it"
    )


def test_a_certificate_not_yet_valid_points_at_the_clock(consortium: ConsortiumPaths) -> None:
    earlier = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    with pytest.raises(
        ConfigError, match=r"is not valid before .* UTC: check this machine's clock$"
    ):
        check_tls(silo_tls(consortium), role="silo silo-a", now=earlier)


def test_a_key_that_is_not_the_certificate_s(consortium: ConsortiumPaths) -> None:
    tls = silo_tls(consortium)
    other = consortium.silos["silo-b"].key
    with pytest.raises(ConfigError) as refused:
        check_tls(
            TLSPaths(ca=tls.ca, cert=tls.cert, key=other),
            role="silo silo-a",
            key_pem=tls_key_pem(other),  # keys are encrypted at rest: the caller opens them
        )
    assert str(refused.value) == (
        f"the silo silo-a key {other} does not belong to the certificate {tls.cert}: [tls] key and cert must be "
        "the pair made for this endpoint"
    )


def test_a_certificate_another_ca_issued(
    consortium: ConsortiumPaths, rogue_consortium: ConsortiumPaths
) -> None:
    rogue = silo_tls(rogue_consortium)
    with pytest.raises(ConfigError) as refused:
        check_tls(
            TLSPaths(ca=consortium.ca_cert, cert=rogue.cert, key=rogue.key), role="silo silo-a"
        )
    assert str(refused.value) == (
        f"the silo silo-a certificate {rogue.cert} is not issued by the consortium CA {consortium.ca_cert}: use "
        "the certificate this consortium issued (and its ca.pem)"
    )


def test_a_file_that_is_no_certificate(consortium: ConsortiumPaths) -> None:
    tls = silo_tls(consortium)
    with pytest.raises(ConfigError, match=r"is not a PEM certificate$"):
        check_tls(TLSPaths(ca=tls.ca, cert=tls.key, key=tls.key), role="silo silo-a")
