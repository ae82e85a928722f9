"""A silo's own revocation list: the newest CA-signed CRL it has seen, checked against its pinned CA.

The coordinator enforces the consortium's CRL on every call (:mod:`coordinator.pki.revocation`); a silo does not
take that on the coordinator's word. It fetches the CRL the coordinator serves (``Audit.GetRevocationList``), keeps
it only if the pinned CA signed it and its CRL number is not smaller than the one it holds (a rollback would
un-revoke someone), and keeps it in its state directory, where its operator may also place a newer CRL the CA sent
out of band. It then refuses to mask with a peer whose certificate the list revokes and to work with a coordinator
whose certificate it revokes (RFC 5280 section 6.3.3: a CRL from the certificate's issuer, the newest one held).

Notes:
    - A peer's certificate comes from the coordinator, which saw it in the peer's mutual-TLS handshake; the silo
      verifies it chains to its pinned CA under the clientAuth policy and names the peer's SPIFFE id, so the
      coordinator can withhold a certificate but not substitute another member's. While the silo holds a list
      that revokes anything, a peer without a verifiable certificate is treated like a revoked one (fail closed).
    - The coordinator's certificate is read from a TLS 1.3 handshake with the coordinator's address under the pinned
      CA (the client can read the server's certificate before it sends its own). It is a separate connection from
      the gRPC channel: it catches a revoked coordinator certificate still in service, not an interceptor that
      shows the revoked certificate on the gRPC connection alone.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from coordinator.errors import PKIError
from coordinator.pki import spiffe_id
from coordinator.pki.custody import write_new_file
from coordinator.pki.revocation import crl_number, load_crl

__all__ = ["HeldRevocations", "server_certificate"]

SERVED = "served by the coordinator"


class HeldRevocations:
    """The revocation list a silo holds (``state_dir/revocations.pem``), re-verified when loaded.

    Args:
        path: where the held CRL is kept (created on the first list accepted).
        ca_pem: the pinned consortium CA certificate (PEM).

    Raises:
        PKIError: the held file exists but does not verify under the CA (one line; replace or delete it).
    """

    def __init__(self, path: Path, ca_pem: bytes) -> None:
        self.path = path
        self.ca_pem = ca_pem
        self.ca = x509.load_pem_x509_certificate(ca_pem)
        self.number = -1
        self.serials: frozenset[int] = frozenset()
        self._pem = b""
        if path.is_file():
            data = path.read_bytes()
            crl = load_crl(path, self.ca, data=data)
            self._set(crl, data)

    def _set(self, crl: x509.CertificateRevocationList, pem: bytes) -> None:
        self.number = crl_number(crl)
        self.serials = frozenset(r.serial_number for r in crl)
        self._pem = pem

    def offer(self, pem: bytes) -> bool:
        """Hold ``pem`` if the pinned CA signed it and it is not older than the held list.

        Returns:
            Whether a newer list is now held (and written to :attr:`path`).

        Raises:
            PKIError: forged (another key or issuer), malformed, older than the held list, or another list with
                the same number; the held list stays in force.
        """
        if not pem or pem == self._pem:
            return False
        crl = load_crl(SERVED, self.ca, data=pem)
        number = crl_number(crl)
        if number < self.number:
            raise PKIError(
                f"the revocation list {SERVED} has CRL number {number}, older than the held {self.number}; "
                "refused, the held list stays in force"
            )
        if number == self.number:
            raise PKIError(
                f"the revocation list {SERVED} differs from the held one with the same CRL number {number}; "
                "refused, the held list stays in force"
            )
        partial = self.path.with_name(self.path.name + ".partial")
        partial.unlink(missing_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_new_file(partial, pem, private=False)
        os.replace(partial, self.path)
        self._set(crl, pem)
        return True

    def revokes(self, cert: x509.Certificate) -> bool:
        """Whether the held list revokes ``cert`` (issued by the pinned CA)."""
        return cert.issuer == self.ca.subject and cert.serial_number in self.serials

    def peer_problem(
        self, federation: str, silo: str, pem: bytes | None, *, now: _dt.datetime | None = None
    ) -> str | None:
        """Why this silo must not mask with ``silo`` (given the certificate the coordinator saw), or ``None``.

        Nothing is refused while the held list revokes nothing.
        """
        if not self.serials:
            return None
        if not pem:
            return f"no certificate of peer {silo!r} is known, and the revocation list is in force"
        try:
            cert = x509.load_pem_x509_certificate(pem)
            at = now if now is not None else _dt.datetime.now(_dt.UTC)
            verified = PolicyBuilder().store(Store([self.ca])).time(at).build_client_verifier()
            subjects = verified.verify(cert, []).subjects or []
        except (ValueError, VerificationError):
            return f"the certificate shown for peer {silo!r} does not chain to the consortium CA"
        if x509.UniformResourceIdentifier(spiffe_id(federation, silo)) not in subjects:
            return f"the certificate shown for peer {silo!r} names another member"
        if self.revokes(cert):
            return (
                f"the certificate of peer {silo!r} (serial {cert.serial_number:x}) is revoked by CRL number "
                f"{self.number}; this silo does not mask with it"
            )
        return None


def server_certificate(address: str, ca_pem: bytes, *, timeout: float = 10.0) -> x509.Certificate:
    """The certificate the TLS server at ``host:port`` presents, verified under ``ca_pem`` (TLS 1.3).

    Raises:
        PKIError: unreachable, or the handshake failed (the certificate does not verify or name the host).
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError) as exc:
        raise PKIError(
            f"cannot read the certificate of the coordinator at {address}: {exc}"
        ) from exc
    if der is None:
        raise PKIError(f"the coordinator at {address} showed no certificate")
    return x509.load_der_x509_certificate(der)
