"""The consortium's public-key infrastructure: TLS certificates, roster and signing keys, key custody.

Production enrolment, where every organisation makes its own keys, lives in :mod:`coordinator.pki.enrol`
(roster governance in :mod:`coordinator.pki.governance`, revocation in :mod:`coordinator.pki.revocation`, key
custody in :mod:`coordinator.pki.custody`). :func:`create_consortium` runs the same steps in one process and
lays out a *development consortium* directory (the CA directory, with every party's directory inside)::

    ca.pem, ca.key                  ECDSA P-256 certificate authority (TLS only)
    consortium.key, consortium.pub  Ed25519 key that signs the roster (.pub is hex)
    roster.json                     signed secagg.Roster: silo id -> Ed25519 signing public key
    governance.json, members/, ...  the CA's governance record, enrolled members, published roster version
    governors/dev/                  the single development governor (quorum 1)
    coordinator/cert.pem, key.pem   serverAuth certificate, SAN = hosts (DNS names and IP addresses)
    coordinator/audit.key, .pub     Ed25519 key that signs ledger checkpoints (.pub is hex)
    silos/<id>/cert.pem, key.pem    clientAuth certificate: CN = <id>, SAN URI spiffe://<federation>/silo/<id>
    silos/<id>/signing.key          the silo's Ed25519 roster key
    silos/<id>/ca.pem               a copy of the CA certificate, so a silo directory is self-contained
    passphrase                      the generated key passphrase (only if none was given)

Silo identity on a connection (what :func:`silo_identity` implements): gRPC puts the verified peer
certificate into ``context.auth_context()["x509_pem_cert"]``; we parse it and take the silo id from its single
SPIFFE URI SAN ``spiffe://<federation>/silo/<id>``, and require the subject CN to name the same silo and the
certificate to carry the clientAuth extended key usage. The coordinator then checks the id against the roster.

Notes:
    - **Development only.** :func:`create_consortium` makes every party's keys in one process (encrypted
      PKCS#8, mode 0600, the passphrase beside them unless one is given) so that tests and ``secagg demo`` run
      unattended. A production consortium enrols each organisation from its own request so private keys never
      leave it (README, "Production enrolment").
    - TLS keys are ECDSA P-256 (FIPS 186-5; RFC 8446 section 4.2.3 ``ecdsa_secp256r1_sha256``), the curve every
      gRPC TLS stack (BoringSSL, OpenSSL) accepts for certificates; Ed25519 certificates are not universally
      supported by TLS peers. Roster, advertisement and checkpoint signatures use Ed25519 (RFC 8032), which
      never touches TLS.
    - Identity comes from a URI SAN in SPIFFE form (SPIFFE X509-SVID specification, section 2) rather than the
      CN alone, because RFC 6125 deprecates identity in the CN and a URI SAN cannot be confused with a DNS
      name. Requiring the CN to agree and the clientAuth EKU (RFC 5280 section 4.2.1.12) is defence in depth:
      a coordinator (serverAuth) certificate, or a certificate whose CN names a different silo, is refused.
    - Certificates are bound to the CA with ``path_length=0`` and carry Subject/Authority Key Identifiers so
      strict RFC 5280 validators (e.g. ``cryptography.x509.verification``) accept the chain.
    - Key generation uses OpenSSL's CSPRNG through ``cryptography``; serial numbers are 159 random bits
      (CA/Browser Forum baseline requirements 7.1: at least 64 bits of CSPRNG output). Only the clock is
      injectable (``now``), for deterministic validity windows in tests.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.errors import PKIError, Unauthorized
from coordinator.pki.custody import (
    PASSPHRASE_ENV,
    load_encrypted_private_key,
    read_passphrase,
    tls_key_pem,
    write_new_file,
)
from coordinator.pki.revocation import Revocations
from secagg import Roster
from secagg.roster import SILO_ID_PATTERN

__all__ = [
    "PASSPHRASE_ENV",
    "ConsortiumPaths",
    "Revocations",
    "SiloPaths",
    "certificate_fingerprint",
    "create_consortium",
    "issue_certificate",
    "load_certificate",
    "load_ed25519_private",
    "load_private_key",
    "read_passphrase",
    "silo_identity",
    "spiffe_id",
    "tls_key_pem",
    "write_new_file",
]

_NAME_PATTERN = SILO_ID_PATTERN  # one definition of a valid id, used with fullmatch
"""Federation and silo ids: the roster's silo-id alphabet, which is also a valid SPIFFE trust domain/path."""

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
"""An RFC 1123 host name, what a DNS SAN may hold (no wildcards: a consortium never needs one)."""

_CLOCK_SKEW = _dt.timedelta(minutes=5)
_DIR_MODE = 0o700


@dataclass(frozen=True)
class SiloPaths:
    """Where one silo's credentials live inside a consortium directory.

    Attributes:
        directory: ``silos/<id>/``.
        cert: clientAuth TLS certificate (PEM).
        key: the TLS private key (PEM PKCS#8, mode 0600).
        signing_key: the silo's Ed25519 roster key (PEM PKCS#8, mode 0600).
        ca_cert: copy of the consortium CA certificate.
    """

    directory: Path
    cert: Path
    key: Path
    signing_key: Path
    ca_cert: Path

    @classmethod
    def at(cls, directory: Path) -> SiloPaths:
        """The standard layout under ``directory``."""
        return cls(
            directory=directory,
            cert=directory / "cert.pem",
            key=directory / "key.pem",
            signing_key=directory / "signing.key",
            ca_cert=directory / "ca.pem",
        )


@dataclass(frozen=True)
class ConsortiumPaths:
    """Every file of a consortium directory (see the module docstring for the layout).

    Attributes:
        root: the consortium directory.
        federation: the federation id (also the roster's and the SPIFFE trust domain).
        ca_cert, ca_key: the TLS certificate authority.
        consortium_key, consortium_public_key: Ed25519 roster-signing key and its hex public key file.
        roster: the signed roster (JSON).
        coordinator_cert, coordinator_key: the coordinator's serverAuth certificate and key.
        audit_key, audit_public_key: Ed25519 checkpoint-signing key and its hex public key file.
        silos: silo id -> :class:`SiloPaths`, in roster order.
    """

    root: Path
    federation: str
    ca_cert: Path
    ca_key: Path
    consortium_key: Path
    consortium_public_key: Path
    roster: Path
    coordinator_cert: Path
    coordinator_key: Path
    audit_key: Path
    audit_public_key: Path
    silos: Mapping[str, SiloPaths]

    @classmethod
    def at(cls, root: Path, *, federation: str, silos: Sequence[str]) -> ConsortiumPaths:
        """The standard layout under ``root`` (nothing is read or written)."""
        return cls(
            root=root,
            federation=federation,
            ca_cert=root / "ca.pem",
            ca_key=root / "ca.key",
            consortium_key=root / "consortium.key",
            consortium_public_key=root / "consortium.pub",
            roster=root / "roster.json",
            coordinator_cert=root / "coordinator" / "cert.pem",
            coordinator_key=root / "coordinator" / "key.pem",
            audit_key=root / "coordinator" / "audit.key",
            audit_public_key=root / "coordinator" / "audit.pub",
            silos=MappingProxyType({s: SiloPaths.at(root / "silos" / s) for s in sorted(silos)}),
        )

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> ConsortiumPaths:
        """Describe an existing consortium directory, taking federation and silos from its roster.

        The roster is parsed but not verified here; whoever trusts it verifies it with the pinned key.

        Raises:
            PKIError: the directory has no readable roster, or a listed file is missing.
        """
        root = Path(root)
        try:
            roster = Roster.loads((root / "roster.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PKIError(f"{root}: not a consortium directory ({exc})") from exc
        paths = cls.at(root, federation=roster.federation, silos=list(roster.members))
        missing = [str(p) for p in paths.files() if not p.is_file()]
        if missing:
            raise PKIError(f"{root}: incomplete consortium, missing {', '.join(missing)}")
        return paths

    def files(self) -> list[Path]:
        """Every file of the consortium."""
        out = [
            self.ca_cert,
            self.ca_key,
            self.consortium_key,
            self.consortium_public_key,
            self.roster,
            self.coordinator_cert,
            self.coordinator_key,
            self.audit_key,
            self.audit_public_key,
        ]
        for silo in self.silos.values():
            out += [silo.cert, silo.key, silo.signing_key, silo.ca_cert]
        return out

    @property
    def passphrase_file(self) -> Path:
        """Where :func:`create_consortium` writes the passphrase it generated (absent if one was given)."""
        return self.root / "passphrase"

    def private_files(self) -> list[Path]:
        """The files holding private keys (written with mode 0600)."""
        out = [self.ca_key, self.consortium_key, self.coordinator_key, self.audit_key]
        for silo in self.silos.values():
            out += [silo.key, silo.signing_key]
        return out


def spiffe_id(federation: str, silo: str) -> str:
    """The URI SAN naming ``silo`` in ``federation``: ``spiffe://<federation>/silo/<silo>``."""
    _check_name("federation", federation)
    _check_name("silo id", silo)
    return f"spiffe://{federation}/silo/{silo}"


def create_consortium(
    directory: str | os.PathLike[str],
    *,
    federation: str,
    silos: Sequence[str],
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    validity_days: int = 30,
    now: _dt.datetime | None = None,
    passphrase: bytes | None = None,
) -> ConsortiumPaths:
    """Write a throwaway development consortium into ``directory`` by running every enrolment step.

    One process plays every party of :mod:`coordinator.pki.enrol` in turn: a governor, the CA operator
    (``ca init``), the coordinator and each silo (``request``), the CA again (``sign``, ``roster propose``),
    the governor (``roster sign``, a quorum of one), the CA (``publish``) and each organisation (``install``). Only the directory layout differs from production: every party's directory
    sits under ``directory`` (see the module docstring).

    Args:
        directory: where to write; created if missing, and it must be empty.
        federation: federation id (lowercase letters, digits, ``. _ -``).
        silos: the silo ids; each gets certificates and keys and a roster entry.
        hosts: DNS names and IP addresses the coordinator's certificate is valid for.
        validity_days: lifetime of every certificate.
        now: the issuing time (UTC); defaults to the current time.
        passphrase: encrypts every private key. Default: the one ``$SECAGG_PASSPHRASE_FILE`` names if set,
            else a fresh 256-bit random one written to ``directory/passphrase`` (mode 0600; point
            ``SECAGG_PASSPHRASE_FILE`` at it to run the consortium).

    Returns:
        The paths of everything written.

    Raises:
        ValueError: invalid federation, silo ids, hosts or validity.
        PKIError: ``directory`` is not empty (an existing consortium is never overwritten) or writing failed.

    Notes:
        Private keys are encrypted PKCS#8 PEM created with ``O_CREAT | O_EXCL`` and mode 0600, so an existing
        file is never replaced and no key is ever readable by other users, even briefly. The generated
        passphrase lies next to the keys, which is acceptable only because this consortium is throwaway: a
        production consortium runs the enrolment steps on separate machines (README, "Production enrolment").
    """
    from coordinator.pki import enrol

    _check_name("federation", federation)
    if not silos:
        raise ValueError("a consortium needs at least one silo")
    for silo in silos:
        _check_name("silo id", silo)
    if len(set(silos)) != len(silos):
        raise ValueError("silo ids must be distinct")
    if not hosts:
        raise ValueError("the coordinator certificate needs at least one host")
    if validity_days < 1:
        raise ValueError("validity_days must be >= 1")
    for host in hosts:
        _general_name(host)  # validate before writing anything

    root = Path(directory)
    if root.is_dir() and any(root.iterdir()):
        raise PKIError(
            f"{root} is not empty: refusing to overwrite an existing consortium "
            "(choose a new directory or delete this one)"
        )
    generated = passphrase is None and not os.environ.get(PASSPHRASE_ENV)
    if passphrase is None:
        passphrase = secrets.token_urlsafe(32).encode() if generated else read_passphrase()
    paths = ConsortiumPaths.at(root, federation=federation, silos=silos)
    issued_at = _utcnow(now)
    governor_dir = root / "governors" / "dev"
    with tempfile.TemporaryDirectory(prefix="secagg-governor-") as scratch:
        # The governor's key is made in its own directory; ca init only ever sees its public key.
        governor_pub = enrol.governor_init(Path(scratch) / "dev", passphrase=passphrase)
        governor = bytes.fromhex(governor_pub.read_text(encoding="ascii").strip())
        enrol.ca_init(
            root,
            federation=federation,
            governors=[governor],
            quorum=1,
            passphrase=passphrase,
            validity_days=validity_days,
            now=issued_at,
        )
        try:
            governor_dir.parent.mkdir(mode=_DIR_MODE)
            shutil.copytree(Path(scratch) / "dev", governor_dir)
        except OSError as exc:
            raise PKIError(f"writing the consortium in {root} failed: {exc}") from exc
    if generated:
        try:
            write_new_file(paths.passphrase_file, passphrase + b"\n", private=True)
        except OSError as exc:
            raise PKIError(f"writing the consortium in {root} failed: {exc}") from exc
    organisations: list[tuple[Path, str, enrol.Role, Sequence[str]]] = [
        (paths.coordinator_cert.parent, "coordinator", "coordinator", hosts)
    ]
    try:
        (root / "silos").mkdir(mode=_DIR_MODE)
        (root / "requests").mkdir(mode=_DIR_MODE)
    except OSError as exc:
        raise PKIError(f"writing the consortium in {root} failed: {exc}") from exc
    organisations += [(p.directory, s, "silo", ()) for s, p in paths.silos.items()]
    for org_dir, member, role, org_hosts in organisations:
        org, _ = enrol.request(
            org_dir,
            member=member,
            role=role,
            federation=federation,
            passphrase=passphrase,
            hosts=org_hosts,
        )
        checked = enrol.read_request(root, org.request)
        issued = enrol.issue(
            root,
            checked,
            root / "requests" / f"{member}.issued.json",
            passphrase=passphrase,
            validity_days=validity_days,
            now=issued_at,
        )
        enrol.install(org_dir, issued, now=issued_at)
    roster_version = root / "requests" / "roster-v1.json"
    enrol.propose(root, roster_version, passphrase=passphrase)
    enrol.sign_roster(governor_dir, roster_version, passphrase=passphrase)  # the quorum of one
    federation_file = enrol.publish(
        root, root / "federation.json", roster_version=roster_version, passphrase=passphrase
    )
    for org_dir, _, _, _ in organisations:
        enrol.install(org_dir, federation_file)
    return paths


def issue_certificate(
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    *,
    common_name: str,
    server: bool,
    hosts: Sequence[str] = (),
    uris: Sequence[str] = (),
    validity_days: int = 30,
    now: _dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """Mint a fresh ECDSA P-256 key and a leaf TLS certificate for it, signed by ``ca_cert``/``ca_key``.

    Args:
        ca_cert: the issuing CA certificate.
        ca_key: the CA's private key.
        common_name: subject CN (a silo id for client certificates).
        server: ``True`` for a serverAuth certificate, ``False`` for clientAuth.
        hosts: DNS names or IP addresses for the SAN (required for a server certificate).
        uris: URI SANs (a silo's :func:`spiffe_id`).
        validity_days: lifetime; the certificate never outlives the CA.
        now: issuing time (UTC); defaults to the current time.

    Returns:
        ``(cert_pem, key_pem)``; the key is unencrypted PKCS#8 PEM.

    Raises:
        ValueError: empty common name, no SAN at all, or an invalid host.
    """
    if not common_name:
        raise ValueError("common_name must not be empty")
    if server and not hosts:
        raise ValueError("a server certificate needs at least one host")
    names = [_general_name(h) for h in hosts] + [x509.UniformResourceIdentifier(u) for u in uris]
    if not names:
        raise ValueError("a certificate needs at least one subject alternative name")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf_certificate(
        ca_cert,
        ca_key,
        key.public_key(),
        common_name=common_name,
        server=server,
        names=names,
        validity_days=validity_days,
        now=now,
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pkcs8(key)


def _leaf_certificate(
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    public_key: ec.EllipticCurvePublicKey,
    *,
    common_name: str,
    server: bool,
    names: Sequence[x509.GeneralName],
    validity_days: int,
    now: _dt.datetime | None,
) -> x509.Certificate:
    """A leaf TLS certificate for ``public_key`` (serverAuth or clientAuth), never outliving the CA."""
    issued_at = _utcnow(now)
    not_after = min(issued_at + _dt.timedelta(days=validity_days), ca_cert.not_valid_after_utc)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued_at - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def load_private_key(
    path: str | os.PathLike[str], passphrase: bytes | None = None
) -> PrivateKeyTypes:
    """Load an encrypted PEM private key (mode 0600); the passphrase defaults to :func:`read_passphrase`.

    Raises:
        PKIError: the file is missing, unreadable, readable by others, unencrypted, under another passphrase
            or not a private key (the message names the file and what to do, never its content).
    """
    return load_encrypted_private_key(path, passphrase)


def load_ed25519_private(
    path: str | os.PathLike[str], passphrase: bytes | None = None
) -> Ed25519PrivateKey:
    """Load an Ed25519 private key (roster, consortium, governor or audit key).

    Raises:
        PKIError: as :func:`load_private_key`, or the key is of another type.
    """
    key = load_private_key(path, passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise PKIError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """Load a PEM certificate.

    Raises:
        PKIError: the file is missing, unreadable or not a PEM certificate.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PKIError(f"cannot read certificate {path}: {exc.strerror}") from exc
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PKIError(f"{path} is not a PEM certificate") from exc


def certificate_fingerprint(pem: bytes | str | x509.Certificate) -> str:
    """SHA-256 hex of the certificate's DER encoding (what ``revoked_certificates`` lists).

    Raises:
        ValueError: ``pem`` is not a PEM certificate.
    """
    cert = pem if isinstance(pem, x509.Certificate) else _parse_pem(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def silo_identity(
    auth_context: Mapping[str, Sequence[bytes]],
    *,
    federation: str | None = None,
    revoked: Collection[str] = frozenset(),
) -> str:
    """The silo id a gRPC peer authenticated as, from ``grpc.ServicerContext.auth_context()``.

    gRPC has already verified the certificate chain against the consortium CA during the TLS handshake;
    this function reads the verified leaf from ``x509_pem_cert`` and decides which silo it names.

    Args:
        auth_context: the mapping gRPC returns (property name -> list of bytes values).
        federation: if given, the SPIFFE trust domain must equal it (pass the served federation).
        revoked: SHA-256 fingerprints (:func:`certificate_fingerprint`) of refused certificates; a
            :class:`Revocations` also refuses what its CA-signed CRL lists.

    Returns:
        The silo id. The caller still checks it against the roster.

    Raises:
        Unauthorized: no client certificate; not exactly one ``spiffe://<federation>/silo/<id>`` URI SAN;
            another federation; a CN that disagrees with the URI; no clientAuth EKU; or a revoked certificate.

    Notes:
        Identity is the SPIFFE URI SAN (SPIFFE X509-SVID, section 2), cross-checked with the CN and the
        clientAuth EKU (RFC 5280 section 4.2.1.12): see the module docstring. Messages name the failed rule
        but never echo attacker-chosen certificate content.
    """
    values = auth_context.get("x509_pem_cert") or ()
    if len(values) != 1:
        raise Unauthorized("no client certificate on this connection")
    leaf = _leaf(bytes(values[0]))
    if isinstance(leaf, str):
        raise Unauthorized(leaf)
    if leaf.fingerprint in revoked or (
        isinstance(revoked, Revocations) and revoked.revokes(leaf.cert, leaf.fingerprint)
    ):
        raise Unauthorized("the client certificate is revoked")
    if federation is not None and leaf.trust_domain and leaf.trust_domain != federation:
        raise Unauthorized("the client certificate belongs to another federation")
    if leaf.refusal is not None:
        raise Unauthorized(leaf.refusal)
    return leaf.silo


@dataclass(frozen=True)
class _Leaf:
    """What :func:`silo_identity` reads from one client certificate, before the per-call checks."""

    cert: x509.Certificate
    fingerprint: str
    trust_domain: str = ""
    silo: str = ""
    refusal: str | None = None
    """Why the certificate names no silo (checked after revocation, so a revoked one says revoked)."""


@functools.lru_cache(maxsize=4096)
def _leaf(pem: bytes) -> _Leaf | str:
    """The parsed leaf of a connection, or why it does not parse; cached by its PEM bytes.

    Every call on a connection presents the same verified certificate, and parsing it (the certificate, its
    SHA-256 and its extensions) was the coordinator's largest per-call cost at 100 silos. The cache holds
    only public certificates and what follows from their bytes alone; revocation and the federation are
    checked on every call.
    """
    try:
        cert = _parse_pem(pem)
    except ValueError:
        return "the client certificate does not parse"
    fingerprint = certificate_fingerprint(cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return _Leaf(
            cert, fingerprint, refusal="the client certificate lacks a SAN or an extended key usage"
        )
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        return _Leaf(
            cert, fingerprint, refusal="the certificate is not a client (clientAuth) certificate"
        )
    spiffe = [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith("spiffe://")
    ]
    if len(spiffe) != 1:
        return _Leaf(
            cert, fingerprint, refusal="the client certificate must carry exactly one spiffe:// URI"
        )
    match = re.fullmatch(r"spiffe://([^/]+)/silo/([^/]+)", spiffe[0])
    if match is None or not all(_NAME_PATTERN.fullmatch(part) for part in match.groups()):
        return _Leaf(
            cert,
            fingerprint,
            refusal="the client certificate's URI is not spiffe://<federation>/silo/<id>",
        )
    trust_domain, silo = match.groups()
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in common_names] != [silo]:
        return _Leaf(
            cert,
            fingerprint,
            trust_domain,
            refusal="the client certificate's CN and URI name different silos",
        )
    return _Leaf(cert, fingerprint, trust_domain, silo)


def _check_name(what: str, value: str) -> None:
    if not _NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _general_name(host: str) -> x509.GeneralName:
    """An IP address SAN if ``host`` parses as one, else a DNS name SAN."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(host):
        raise ValueError(f"invalid host {host!r}: give a DNS name or an IP address")
    return x509.DNSName(host)


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey, federation: str, issued_at: _dt.datetime, validity_days: int
) -> x509.Certificate:
    """The self-signed CA certificate (``key`` may sign in a token: :mod:`coordinator.pki.signer`)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"secagg consortium {federation}"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} development CA"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued_at - _CLOCK_SKEW)
        .not_valid_after(issued_at + _dt.timedelta(days=validity_days))
        # path_length=0: the CA issues leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _parse_pem(pem: bytes | str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


def _pkcs8(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _utcnow(now: _dt.datetime | None) -> _dt.datetime:
    if now is None:
        return _dt.datetime.now(_dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return now.astimezone(_dt.UTC)
