"""Certificate revocation: the CA signs an X.509 CRL (``secagg pki revoke``); the coordinator enforces it.

Notes:
    - The list is a standard X.509 v2 CRL (RFC 5280 section 5) signed by the consortium CA's key, with a CRL
      number (section 5.2.3) that only grows. Any TLS tool can read it, and nobody without the CA key can
      forge or shorten it.
    - The coordinator checks the file at every call and re-verifies it when it changed, so a revoked silo is refused at its next call
      without a restart. A replacement that does not verify under the CA, names another issuer or carries a
      smaller CRL number (a rollback that would un-revoke someone) is refused and the list already loaded
      stays in force: failing closed keeps every earlier revocation (RFC 5280 section 6.3.3 checks).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.errors import PKIError

__all__ = ["Revocations", "load_crl"]

log = logging.getLogger(__name__)


def load_crl(
    path: str | os.PathLike[str], ca_cert: x509.Certificate, *, data: bytes | None = None
) -> x509.CertificateRevocationList:
    """Read a PEM CRL (from ``path``, or ``data`` already read from it) and check ``ca_cert`` signed it.

    Raises:
        PKIError: unreadable, malformed, another issuer, or a signature that does not verify.
    """
    try:
        crl = x509.load_pem_x509_crl(Path(path).read_bytes() if data is None else data)
    except (OSError, ValueError) as exc:
        raise PKIError(f"cannot read the revocation list {path}: not a PEM X.509 CRL") from exc
    public = ca_cert.public_key()
    if crl.issuer != ca_cert.subject or not isinstance(public, ec.EllipticCurvePublicKey):
        raise PKIError(f"the revocation list {path} was not issued by the consortium CA; refused")
    if not crl.is_signature_valid(public):
        raise PKIError(
            f"the revocation list {path} is not signed by the consortium CA (forged?); refused"
        )
    return crl


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The CRL number extension (0 if absent)."""
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


class Revocations(Collection[str]):
    """Refused client certificates: fixed SHA-256 fingerprints plus a CA-signed CRL that is re-read on change.

    As a collection it holds the fixed fingerprints (``revoked_certificates`` in ``serve.toml``);
    :meth:`revokes` also consults the CRL.

    Args:
        fingerprints: SHA-256 hex fingerprints to refuse.
        crl: a PEM CRL file (``secagg pki revoke``), or ``None``.
        ca_cert: the consortium CA certificate the CRL must verify under (required with ``crl``).

    Raises:
        PKIError: the CRL does not load or verify at construction.
    """

    def __init__(
        self,
        fingerprints: Iterable[str] = (),
        *,
        crl: str | os.PathLike[str] | None = None,
        ca_cert: x509.Certificate | None = None,
    ) -> None:
        self._fingerprints = frozenset(f.lower() for f in fingerprints)
        self._path = Path(crl) if crl is not None else None
        if self._path is not None and ca_cert is None:
            raise ValueError("a CRL needs the CA certificate it is checked against")
        self._ca = ca_cert
        self._lock = threading.Lock()
        self._serials: frozenset[int] = frozenset()
        self._number = -1
        self._stamp: bytes | None = None
        self._pem = b""
        if self._path is not None:
            self._reload(strict=True)

    def __contains__(self, item: object) -> bool:
        return item in self._fingerprints

    def __iter__(self) -> Iterator[str]:
        return iter(self._fingerprints)

    def __len__(self) -> int:
        return len(self._fingerprints)

    def current_pem(self) -> bytes:
        """The CRL in force (PEM), as loaded and verified; empty without one. Silos verify it themselves."""
        if self._path is None:
            return b""
        self._reload(strict=False)
        with self._lock:
            return self._pem

    def revokes(self, cert: x509.Certificate, fingerprint: str) -> bool:
        """Whether ``cert`` (with SHA-256 ``fingerprint``) is refused: listed, or on the current CRL."""
        if fingerprint in self._fingerprints:
            return True
        if self._path is None or self._ca is None:
            return False
        self._reload(strict=False)
        return cert.issuer == self._ca.subject and cert.serial_number in self._serials

    def _reload(self, *, strict: bool) -> None:
        assert self._path is not None
        assert self._ca is not None
        with self._lock:
            try:
                # The file is small: comparing its bytes on every call catches any replacement, even one
                # within the file system's timestamp granularity.
                stamp = self._path.read_bytes()
            except OSError as exc:
                if strict:
                    raise PKIError(f"cannot read the revocation list {self._path}") from exc
                log.error(
                    "revocation list %s unreadable; the loaded list stays in force", self._path
                )
                return
            if stamp == self._stamp:
                return
            try:
                crl = load_crl(self._path, self._ca, data=stamp)
                number = crl_number(crl)
                if number < self._number:
                    raise PKIError(
                        f"the revocation list {self._path} has CRL number {number}, older than the "
                        f"loaded {self._number}; refused"
                    )
            except PKIError as exc:
                if strict:
                    raise
                log.error("%s; the loaded list stays in force", exc)
                self._stamp = stamp  # do not re-verify the same bad file on every call
                return
            self._serials = frozenset(r.serial_number for r in crl)
            self._number = number
            self._stamp = stamp
            self._pem = stamp
            log.info(
                "revocation list %s number %d: %d certificate(s) revoked",
                self._path,
                number,
                len(self._serials),
            )


def next_crl(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    serials: Iterable[int],
    *,
    number: int,
    now: _dt.datetime,
    validity_days: int = 30,
) -> x509.CertificateRevocationList:
    """A CRL revoking ``serials``, numbered ``number``, signed by the CA."""
    from cryptography.hazmat.primitives import hashes

    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + _dt.timedelta(days=validity_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(ca_key, hashes.SHA256())
