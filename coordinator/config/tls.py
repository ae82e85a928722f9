"""Checks of a ``[tls]`` table's files before they are used, so a bad or expired certificate is said in words.

gRPC reports a certificate that does not fit its key as "Failed to bind to address" on the coordinator, and an
expired or foreign certificate only as a failed handshake on the other side; these checks name the file and
what to do instead.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from coordinator.config.base import TLSPaths
from coordinator.errors import ConfigError

__all__ = ["check_tls"]


def check_tls(
    paths: TLSPaths,
    *,
    role: str,
    key_pem: bytes | None = None,
    now: datetime.datetime | None = None,
) -> None:
    """Refuse TLS files a handshake would fail on: one line naming the file and the fix.

    Args:
        paths: the ``[tls]`` files.
        role: whose they are, for the message (``"coordinator"`` or ``"silo a"``).
        key_pem: the private key, decrypted (keys are encrypted at rest; the caller has opened it); read from
            ``paths.key`` when ``None`` (an unencrypted key; an encrypted one is then not compared).
        now: the time to check validity at (UTC; the system clock by default).

    Raises:
        ConfigError: a file does not parse; the certificate or the CA has expired or is not yet valid; the key
            is not the certificate's; the certificate is not issued by the CA.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    ca = _certificate(paths.ca, "CA certificate")
    cert = _certificate(paths.cert, f"{role} certificate")
    for name, certificate, path in (("CA", ca, paths.ca), (role, cert, paths.cert)):
        if certificate.not_valid_after_utc < now:
            raise ConfigError(
                f"the {name} certificate {path} expired on {certificate.not_valid_after_utc:%Y-%m-%d}: ask "
                "the consortium CA for a new one (secagg pki) and install it"
            )
        if certificate.not_valid_before_utc > now:
            raise ConfigError(
                f"the {name} certificate {path} is not valid before "
                f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: check this machine's clock"
            )
    try:
        data = key_pem if key_pem is not None else paths.key.read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        key = None  # encrypted at rest: gRPC would need it decrypted first; nothing to compare here
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the {role} key {paths.key} is not a PEM private key") from exc
    if key is not None and _public(key.public_key()) != _public(cert.public_key()):
        raise ConfigError(
            f"the {role} key {paths.key} does not belong to the certificate {paths.cert}: [tls] key and cert "
            "must be the pair made for this endpoint"
        )
    if not _signed_by(cert, ca):
        raise ConfigError(
            f"the {role} certificate {paths.cert} is not issued by the consortium CA {paths.ca}: use the "
            "certificate this consortium issued (and its ca.pem)"
        )


def _certificate(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the {what} {path} is not a PEM certificate") from exc


def _public(key: Any) -> bytes:
    data: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
