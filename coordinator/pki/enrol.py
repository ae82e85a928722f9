"""Enrolment across organisations: each party makes its own keys; only public material travels.

Who runs what (``secagg pki ...``), and the files each step writes::

    governor init GOV_DIR        a governor      GOV_DIR/governor.key (private), governor.pub  -> CA operator
    ca init CA_DIR ...           the CA operator CA_DIR/ca.key, consortium.key (private), ca.pem, consortium.pub,
                                                 governance.json (federation, K-of-N governor public keys)
    request ORG_DIR ...          each org        ORG_DIR/key.pem, signing.key (+ audit.key) (private),
                                                 request.json (CSR + public keys + proofs)  -> CA operator
    sign CA_DIR REQUEST          the CA operator ISSUED (certificate + CA certificate)      -> the org
                                                 CA_DIR/members/<id>.json
    request ORG_DIR --rotate     an enrolled silo ORG_DIR/signing.key.next (private, not yet used),
                                                 rotation.json (CSR by its TLS key + new key + proof) -> CA
    sign CA_DIR rotation.json    the CA operator members/<id>.json takes the new roster key; a receipt
    roster propose CA_DIR        the CA operator V = roster version n+1, consortium-signed -> governors
                 [--rotate ID] [--governor PUB... --quorum K]
    roster sign GOV_DIR V        K governors     their signatures added to V             -> CA operator
    publish CA_DIR --roster V    the CA operator F = federation.json (CA certificate, roster version V,
                                                 consortium, audit and governor public keys) -> every org
    install ORG_DIR ISSUED|F|V   each org        ORG_DIR/cert.pem, ca.pem | roster.json, roster-version.json,
                                                 governance.json, consortium.pub, audit.pub

A request proves possession of every key it names: the CSR is signed by the TLS key (PKCS#10, RFC 2986
section 4.2) and carries, in an extension the CSR signature covers, the Ed25519 roster key (and the
coordinator's audit key) with an Ed25519 signature by each over a statement binding it to the federation,
the id, the role and the TLS public key. A proof therefore cannot be replayed for another organisation, id or
TLS key, and nobody can enrol a key they do not hold (the "proof of possession" of RFC 4211 section 4).

Notes:
    - The CA checks each request against its own federation, the role's rules (a silo carries exactly its
      ``spiffe://<federation>/silo/<id>`` URI and no host; the coordinator ``spiffe://<federation>/coordinator``
      and at least one host) and refuses an id already enrolled; it never copies an extension it did not check.
    - Out-of-band confirmation: the organisation prints its key fingerprints when it makes the request; the CA
      operator compares them (by phone, signed letter) with what ``sign`` prints before issuing. A request
      swapped in transit is caught there, as in the ACME-less enterprise flows of RFC 7030 section 4.2.
    - The federation file's public keys (consortium, coordinator audit key, governors and quorum) are signed
      by the CA key, so a member takes them only from the CA it confirmed out of band, not from whoever
      carried the file.
    - ``install`` checks the chain with ``cryptography.x509.verification`` (RFC 5280 path validation, the
      clientAuth or serverAuth policy of the role) and that the certificate is for this organisation's own
      TLS key, id and federation; the CA certificate is trusted on first install and pinned after it.
    - A member installs a roster only as a version K governors signed that extends the one it pins
      (:mod:`coordinator.pki.governance`); the CA operator's consortium key alone cannot change it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from audits.roster import check_governance, governance_json
from coordinator.errors import PKIError
from coordinator.pki import (
    _ca_certificate,
    _check_name,
    _general_name,
    _leaf_certificate,
    _utcnow,
    certificate_fingerprint,
    spiffe_id,
)
from coordinator.pki.custody import (
    load_encrypted_private_key,
    write_new_file,
    write_private_key,
)
from coordinator.pki.governance import (
    KIND_ROSTER_VERSION,
    RosterVersion,
    check_extends,
    governance_pins,
)
from coordinator.pki.revocation import crl_number, load_crl, next_crl
from coordinator.pki.signer import Algorithm, generate_token_key, load_signer, reference_file
from secagg import Roster
from secagg.hazmat.keys import encode_fields

__all__ = [
    "ENROLMENT_KEYS_OID",
    "CaPaths",
    "EnrolmentRequest",
    "OrgPaths",
    "PendingRotation",
    "Role",
    "ca_init",
    "governor_init",
    "install",
    "issue",
    "propose",
    "publish",
    "read_request",
    "request",
    "request_rotation",
    "revoke",
    "sign_roster",
]

Role = Literal["silo", "coordinator"]
_ROLES: tuple[Role, ...] = ("silo", "coordinator")
_FORMAT = 1
_KIND_REQUEST = "secagg-enrolment-request"
_KIND_ISSUED = "secagg-issued-certificate"
_KIND_FEDERATION = "secagg-federation"
_KIND_ROTATION = "secagg-key-rotation"
_POP_LABEL = "secagg enrolment proof of possession"
# A UUID-derived OID (ITU-T X.667 / RFC 4122 "2.25" arc): needs no registration and cannot collide.
ENROLMENT_KEYS_OID = x509.ObjectIdentifier("2.25.152573094958221593640916125962735087463")
"""The CSR extension holding the roster (and audit) public keys and their proofs of possession (JSON)."""
_DIR_MODE = 0o700


@dataclass(frozen=True)
class OrgPaths:
    """An organisation's directory (``secagg pki request`` / ``install``): its private keys never leave it.

    Attributes:
        directory: ORG_DIR.
        request: ``request.json`` (public; travels to the CA operator).
        key: TLS private key (encrypted PKCS#8, 0600).
        signing_key: Ed25519 roster key (encrypted, 0600).
        audit_key, audit_public_key: the coordinator's Ed25519 checkpoint key (encrypted, 0600) and its hex.
        cert, ca_cert: installed TLS certificate and the pinned CA certificate.
        roster, consortium_public_key: installed signed roster and the consortium key (hex) it verifies under.
        roster_version, governance: the pinned roster version (with its governor signatures) and the pinned
            governor keys and quorum.
        next_signing_key, rotation: a roster key rotation in progress (``request --rotate``): the new Ed25519
            key (encrypted, 0600), not used until a roster version lists it, and its request (public).
    """

    directory: Path
    request: Path
    key: Path
    signing_key: Path
    audit_key: Path
    audit_public_key: Path
    cert: Path
    ca_cert: Path
    roster: Path
    consortium_public_key: Path
    roster_version: Path
    governance: Path
    next_signing_key: Path
    rotation: Path

    @classmethod
    def at(cls, directory: str | os.PathLike[str]) -> OrgPaths:
        """The standard layout under ``directory`` (nothing is read or written)."""
        d = Path(directory)
        return cls(
            directory=d,
            request=d / "request.json",
            key=d / "key.pem",
            signing_key=d / "signing.key",
            audit_key=d / "audit.key",
            audit_public_key=d / "audit.pub",
            cert=d / "cert.pem",
            ca_cert=d / "ca.pem",
            roster=d / "roster.json",
            consortium_public_key=d / "consortium.pub",
            roster_version=d / "roster-version.json",
            governance=d / "governance.json",
            next_signing_key=d / "signing.key.next",
            rotation=d / "rotation.json",
        )


@dataclass(frozen=True)
class CaPaths:
    """The CA operator's directory (``secagg pki ca init``).

    Attributes:
        directory: CA_DIR.
        ca_cert, ca_key: the TLS certificate authority (key encrypted, 0600).
        consortium_key, consortium_public_key: the Ed25519 roster-signing key (encrypted) and its hex.
        governance: ``governance.json``: federation, quorum and governor public keys.
        roster, roster_version: the published roster version (K governors signed it) and its roster.
        members: ``members/``: one public record per enrolled organisation.
        crl: the CA-signed revocation list (``secagg pki revoke``).
    """

    directory: Path
    ca_cert: Path
    ca_key: Path
    consortium_key: Path
    consortium_public_key: Path
    governance: Path
    roster: Path
    roster_version: Path
    members: Path
    crl: Path

    @classmethod
    def at(cls, directory: str | os.PathLike[str]) -> CaPaths:
        """The standard layout under ``directory``."""
        d = Path(directory)
        return cls(
            directory=d,
            ca_cert=d / "ca.pem",
            ca_key=d / "ca.key",
            consortium_key=d / "consortium.key",
            consortium_public_key=d / "consortium.pub",
            governance=d / "governance.json",
            roster=d / "roster.json",
            roster_version=d / "roster-version.json",
            members=d / "members",
            crl=d / "crl.pem",
        )


@dataclass(frozen=True)
class EnrolmentRequest:
    """A parsed, fully checked request (:func:`read_request`): what ``sign`` shows and issues.

    Attributes:
        federation, member, role: who asks.
        csr: the PKCS#10 request (its signature verified).
        hosts: the coordinator's DNS names and IP addresses (empty for a silo).
        roster_key, audit_key: the Ed25519 public keys (raw 32 bytes; ``audit_key`` only for a coordinator).
        previous_roster_key: for a rotation request (``request --rotate``), the enrolled key it replaces.
    """

    federation: str
    member: str
    role: Role
    csr: x509.CertificateSigningRequest
    hosts: tuple[str, ...]
    roster_key: bytes
    audit_key: bytes | None
    previous_roster_key: bytes | None = None

    @property
    def rotation(self) -> bool:
        """Whether this request rotates an enrolled silo's roster key (``previous_roster_key``)."""
        return self.previous_roster_key is not None

    def fingerprints(self) -> dict[str, str]:
        """SHA-256 fingerprints to confirm out of band (the organisation printed the same at request time)."""
        return _fingerprints(self.csr.public_key(), self.roster_key, self.audit_key)


def governor_init(
    directory: str | os.PathLike[str], *, passphrase: bytes | None, key: str | None = None
) -> Path:
    """Make a governor's Ed25519 key in ``directory``; returns ``governor.pub`` (hex, travels to the CA).

    Args:
        directory: new or empty GOV_DIR.
        passphrase: encrypts ``governor.key`` (unused with ``key``).
        key: a ``pkcs11:`` URI: generate the key in that token instead, and write ``governor.key.uri``.

    Raises:
        PKIError: ``directory`` is not empty or cannot be written; the token refuses (see
            :mod:`coordinator.pki.signer`).
    """
    root = _new_directory(directory, what="governor")
    public_key = _new_key(root / "governor.key", passphrase, key, algorithm="ed25519")
    try:
        public = root / "governor.pub"
        write_new_file(public, _hex_line(public_key.public_key().public_bytes_raw()), private=False)
    except OSError as exc:
        raise PKIError(f"writing the governor key in {root} failed: {exc}") from exc
    return public


def ca_init(
    directory: str | os.PathLike[str],
    *,
    federation: str,
    governors: Sequence[bytes],
    quorum: int,
    passphrase: bytes | None,
    validity_days: int = 365,
    now: _dt.datetime | None = None,
    ca_key: str | None = None,
    consortium_key: str | None = None,
) -> CaPaths:
    """Create the consortium CA, the roster-signing key and the governance record in ``directory``.

    Args:
        directory: new or empty directory.
        federation: the federation id (SPIFFE trust domain).
        governors: the N governors' Ed25519 public keys (raw 32 bytes), from ``governor.pub`` files.
        quorum: K, the number of governor signatures a roster version needs.
        passphrase: encrypts the CA and consortium keys kept in files.
        validity_days: the CA certificate's lifetime.
        now: issuing time (UTC).
        ca_key: a ``pkcs11:`` URI: generate the CA key (ECDSA P-256) in that token; ``ca.key.uri`` names it.
        consortium_key: likewise for the consortium key (Ed25519; ``consortium.key.uri``).

    Raises:
        ValueError: invalid federation, K not in 1..N, a governor key twice or malformed.
        PKIError: ``directory`` is not empty or cannot be written.
    """
    _check_name("federation", federation)
    if not governors:
        raise ValueError("a consortium needs at least one governor")
    if len(set(governors)) != len(governors):
        raise ValueError("the same governor key is given twice")
    for key in governors:
        Ed25519PublicKey.from_public_bytes(key)  # ValueError if not 32 bytes
    if not 1 <= quorum <= len(governors):
        raise ValueError(f"the quorum must be between 1 and the {len(governors)} governors")
    if validity_days < 1:
        raise ValueError("validity_days must be >= 1")
    paths = CaPaths.at(_new_directory(directory, what="CA"))
    issued_at = _utcnow(now)
    ca_signer = _new_key(paths.ca_key, passphrase, ca_key, algorithm="ecdsa-p256")
    consortium_signer = _new_key(
        paths.consortium_key, passphrase, consortium_key, algorithm="ed25519"
    )
    try:
        ca_cert = _ca_certificate(ca_signer, federation, issued_at, validity_days)
        write_new_file(
            paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False
        )
        consortium_public = consortium_signer.public_key().public_bytes_raw()
        write_new_file(paths.consortium_public_key, _hex_line(consortium_public), private=False)
        governance = {
            "format": _FORMAT,
            "federation": federation,
            "quorum": quorum,
            "governors": [key.hex() for key in governors],
            "ca_fingerprint": certificate_fingerprint(ca_cert),
            "consortium_public_key": consortium_public.hex(),
        }
        write_new_file(paths.governance, _json_bytes(governance), private=False)
        paths.members.mkdir(mode=_DIR_MODE)
    except OSError as exc:
        raise PKIError(f"writing the CA in {paths.directory} failed: {exc}") from exc
    return paths


def request(
    directory: str | os.PathLike[str],
    *,
    member: str,
    role: Role,
    federation: str,
    passphrase: bytes,
    hosts: Sequence[str] = (),
    audit_key: str | None = None,
) -> tuple[OrgPaths, dict[str, str]]:
    """Make an organisation's private keys in ``directory`` and write its ``request.json``.

    Args:
        directory: new or empty ORG_DIR.
        member: the silo id, or the coordinator's name.
        role: ``"silo"`` or ``"coordinator"``.
        federation: the federation to join.
        passphrase: encrypts every key written.
        hosts: the coordinator's DNS names and IP addresses (required for it; none for a silo).
        audit_key: coordinator only: a ``pkcs11:`` URI; the audit key is generated in that token and
            ``audit.key.uri`` names it (serve.toml's ``audit_key``).

    Returns:
        The paths and the key fingerprints to confirm with the CA operator out of band.

    Raises:
        ValueError: invalid id, federation, role or hosts.
        PKIError: ``directory`` is not empty or cannot be written.
    """
    _check_name("federation", federation)
    _check_name("id", member)
    if role not in _ROLES:
        raise ValueError(f"invalid role {role!r}: use silo or coordinator")
    if role == "silo" and hosts:
        raise ValueError("a silo certificate names no host (only the coordinator serves)")
    if role == "coordinator" and not hosts:
        raise ValueError("the coordinator needs at least one host (DNS name or IP address)")
    if role == "silo" and audit_key is not None:
        raise ValueError("only the coordinator has an audit key")
    names = [_general_name(h) for h in hosts]
    paths = OrgPaths.at(_new_directory(directory, what="organisation"))
    tls_key = ec.generate_private_key(ec.SECP256R1())
    roster_key = Ed25519PrivateKey.generate()
    audit_signer = (
        _new_key(paths.audit_key, passphrase, audit_key, algorithm="ed25519")
        if role == "coordinator"
        else None
    )
    roster_public = roster_key.public_key().public_bytes_raw()
    audit_public = audit_signer.public_key().public_bytes_raw() if audit_signer else None
    document = _request_document(
        tls_key,
        roster_key,
        audit_signer,
        federation=federation,
        member=member,
        role=role,
        names=names,
    )
    try:
        write_private_key(paths.key, tls_key, passphrase)
        write_private_key(paths.signing_key, roster_key, passphrase)
        if audit_public is not None:
            write_new_file(paths.audit_public_key, _hex_line(audit_public), private=False)
        write_new_file(paths.request, _json_bytes(document), private=False)
    except OSError as exc:
        raise PKIError(f"writing the request in {paths.directory} failed: {exc}") from exc
    return paths, _fingerprints(tls_key.public_key(), roster_public, audit_public)


def request_rotation(
    directory: str | os.PathLike[str],
    *,
    member: str,
    federation: str,
    passphrase: bytes,
) -> tuple[OrgPaths, dict[str, str]]:
    """Make a new roster key for an enrolled silo and write ``ORG_DIR/rotation.json`` (``request --rotate``).

    The live ``signing.key`` is not touched: the new key goes to ``signing.key.next`` (encrypted, 0600) and the
    silo keeps signing with the live one until a roster version K governors signed lists the new key; then
    ``install`` (or the running silo, :class:`PendingRotation`) moves it into place. The request is signed by
    the organisation's enrolled TLS key (its certificate travels with it), so the CA knows the enrolled member
    asks, and it carries a proof of possession of the new key bound to that TLS key (RFC 4211 section 4).

    Args:
        directory: the ORG_DIR ``request`` wrote, with its certificate installed.
        member, federation: must be the ones the directory enrolled with (a check, not a choice).
        passphrase: of the organisation's keys (decrypts ``key.pem``, encrypts the new key).

    Returns:
        The paths and the fingerprints to confirm with the CA operator out of band.

    Raises:
        PKIError: not an enrolled silo's directory, another id or federation, a rotation already in progress,
            the TLS key does not load, or writing failed.
    """
    paths = OrgPaths.at(directory)
    mine = _read_json(paths.request, kind=_KIND_REQUEST, what="enrolment request")
    if (mine.get("id"), mine.get("federation"), mine.get("role")) != (member, federation, "silo"):
        raise PKIError(
            f"{paths.directory} enrolled {mine.get('role')} {mine.get('id')!r} in federation "
            f"{mine.get('federation')!r}: only a silo rotates its roster key, with its own id and federation"
        )
    if not paths.cert.is_file():
        raise PKIError(f"{paths.directory}: install your issued certificate before rotating a key")
    if paths.rotation.exists() or paths.next_signing_key.exists():
        raise PKIError(
            f"{paths.directory}: a key rotation is already in progress ({paths.rotation}); send that "
            "request, or delete it and signing.key.next to start again"
        )
    tls_key = load_encrypted_private_key(paths.key, passphrase)
    if not isinstance(tls_key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{paths.key} is not the ECDSA P-256 key secagg made")
    cert = _load_cert(paths.cert)
    if _spki(cert.public_key()) != _spki(tls_key.public_key()):
        raise PKIError(f"{paths.cert} is not the certificate of {paths.key}")
    roster_key = Ed25519PrivateKey.generate()
    document = _request_document(
        tls_key,
        roster_key,
        None,
        federation=federation,
        member=member,
        role="silo",
        names=[],
        rotation=True,
    )
    document["certificate"] = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    roster_public = roster_key.public_key().public_bytes_raw()
    try:
        write_private_key(paths.next_signing_key, roster_key, passphrase)
        write_new_file(paths.rotation, _json_bytes(document), private=False)
    except OSError as exc:
        raise PKIError(f"writing the rotation request in {paths.directory} failed: {exc}") from exc
    return paths, _fingerprints(tls_key.public_key(), roster_public, None)


@dataclass(frozen=True)
class PendingRotation:
    """A roster key rotation this silo asked for and has not completed: the new key and its request.

    The silo learns the rotation took effect from the roster itself: the first verified roster version that
    lists the new public key for this silo is the one it switches keys at (the coordinator verifies that
    round's signatures under the same version). :meth:`complete` then makes the new key the live one on disk.

    Attributes:
        live: ``signing.key``; next_key: ``signing.key.next``.
        request: ``rotation.json``; enrolled: ``request.json`` (replaced by the rotation request at the end).
        public_key: the new key's raw public bytes (from the public request: no passphrase needed).
    """

    live: Path
    next_key: Path
    request: Path
    enrolled: Path
    public_key: bytes

    @classmethod
    def at(cls, signing_key: str | os.PathLike[str]) -> PendingRotation | None:
        """The rotation in progress next to ``signing_key`` (an ORG_DIR's ``signing.key``), or ``None``.

        Raises:
            PKIError: ``rotation.json`` exists but is malformed, or its new key file is missing.
        """
        live = Path(signing_key)
        paths = OrgPaths.at(live.parent)
        if not paths.rotation.exists():
            return None
        doc = _read_json(paths.rotation, kind=_KIND_REQUEST, what="rotation request")
        try:
            public = bytes.fromhex(str(doc["roster_key"]))
        except (KeyError, ValueError) as exc:
            raise PKIError(f"{paths.rotation}: malformed rotation request") from exc
        next_key = live.with_name(live.name + ".next")
        if not next_key.is_file():
            raise PKIError(
                f"{paths.rotation} names a new key but {next_key} is missing; make the rotation request again"
            )
        return cls(live, next_key, paths.rotation, paths.request, public)

    def complete(self) -> None:
        """Make the new key the live one (rename, atomic) and the rotation request the enrolled one.

        Raises:
            PKIError: a rename failed (the roster already lists the new key: retry, or rename by hand).
        """
        try:
            os.replace(self.next_key, self.live)
            os.replace(self.request, self.enrolled)
        except OSError as exc:
            raise PKIError(
                f"completing the key rotation in {self.live.parent} failed: {exc}"
            ) from exc


def _request_document(
    tls_key: ec.EllipticCurvePrivateKey,
    roster_key: Ed25519PrivateKey,
    audit_signer: Any,
    *,
    federation: str,
    member: str,
    role: Role,
    names: Sequence[x509.GeneralName],
    rotation: bool = False,
) -> dict[str, Any]:
    """The request document: a CSR signed by ``tls_key`` carrying the public keys and their proofs of possession.

    ``rotation`` is inside the CSR's signed extension too, so nobody can turn a new enrolment into a rotation of
    an enrolled id (or back) in transit.
    """
    roster_public = roster_key.public_key().public_bytes_raw()
    audit_public = audit_signer.public_key().public_bytes_raw() if audit_signer else None
    spki = _spki(tls_key.public_key())
    proofs = {
        "roster": roster_key.sign(
            _pop_payload("roster", federation, member, role, spki, roster_public, audit_public)
        ).hex()
    }
    if audit_signer is not None:
        proofs["audit"] = audit_signer.sign(
            _pop_payload("audit", federation, member, role, spki, roster_public, audit_public)
        ).hex()
    keys: dict[str, Any] = {
        "roster_key": roster_public.hex(),
        "audit_key": audit_public.hex() if audit_public else None,
        "proofs": proofs,
    }
    if rotation:
        keys["rotation"] = True
    uri = _member_uri(federation, member, role)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, member)]))
        .add_extension(
            x509.SubjectAlternativeName([*names, x509.UniformResourceIdentifier(uri)]),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(ENROLMENT_KEYS_OID, _json_bytes(keys)), critical=False
        )
        .sign(tls_key, hashes.SHA256())
    )
    return {
        "format": _FORMAT,
        "kind": _KIND_REQUEST,
        "federation": federation,
        "id": member,
        "role": role,
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        **keys,
    }


def read_request(ca_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> EnrolmentRequest:
    """Parse ``request.json`` and check it completely against the CA in ``ca_dir`` (nothing is written).

    Raises:
        PKIError: unreadable; another federation; a malformed CSR or one whose signature fails; names or
            extensions that break the role's rules; a proof of possession that does not verify; an id or a
            roster key already enrolled. One line each, saying what to do.
    """
    paths = CaPaths.at(ca_dir)
    governance = _governance(paths)
    doc = _read_json(Path(path), kind=_KIND_REQUEST, what="enrolment request")
    federation, member, role = doc.get("federation"), doc.get("id"), doc.get("role")
    if federation != governance["federation"]:
        raise PKIError(
            f"{path} asks to join federation {federation!r}, but this CA serves "
            f"{governance['federation']!r}: the organisation must run `secagg pki request` with "
            f"--federation {governance['federation']}"
        )
    if not isinstance(member, str) or role not in _ROLES:
        raise PKIError(f"{path}: the request names no valid id and role (silo or coordinator)")
    try:
        _check_name("id", member)
        csr = x509.load_pem_x509_csr(str(doc.get("csr", "")).encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise PKIError(f"{path}: the id or the CSR is malformed; make a new request") from exc
    if not csr.is_signature_valid:
        raise PKIError(f"{path}: the CSR signature does not verify; make a new request")
    tls_public = csr.public_key()
    if (
        not isinstance(tls_public, ec.EllipticCurvePublicKey)
        or tls_public.curve.name != "secp256r1"
    ):
        raise PKIError(f"{path}: the TLS key must be ECDSA P-256; make the request with secagg")
    if [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] != [member]:
        raise PKIError(f"{path}: the CSR's CN does not name {member!r}; make a new request")
    hosts = _check_request_names(csr, federation, member, role, path)
    try:
        extension = csr.extensions.get_extension_for_oid(ENROLMENT_KEYS_OID).value
    except x509.ExtensionNotFound as exc:
        raise PKIError(
            f"{path}: the CSR carries no enrolment keys; make the request with secagg"
        ) from exc
    assert isinstance(extension, x509.UnrecognizedExtension)
    try:
        keys = json.loads(extension.value)
        roster_key = bytes.fromhex(keys["roster_key"])
        audit_key = bytes.fromhex(keys["audit_key"]) if keys["audit_key"] is not None else None
        proofs = {k: bytes.fromhex(v) for k, v in keys["proofs"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PKIError(
            f"{path}: the CSR's enrolment keys are malformed; make a new request"
        ) from exc
    rotation = keys.get("rotation", False) is True
    if any(doc.get(k) != keys.get(k) for k in ("roster_key", "audit_key", "proofs", "rotation")):
        raise PKIError(f"{path}: the keys listed in the request differ from those its CSR signs")
    if (audit_key is not None) != (role == "coordinator"):
        raise PKIError(f"{path}: an audit key is required for the coordinator and only for it")
    spki = _spki(tls_public)
    for purpose, public in (("roster", roster_key), ("audit", audit_key)):
        if public is None:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(
                proofs.get(purpose, b""),
                _pop_payload(purpose, federation, member, role, spki, roster_key, audit_key),
            )
        except (InvalidSignature, ValueError) as exc:
            raise PKIError(
                f"{path}: the proof of possession of the {purpose} key does not verify: the requester "
                "may not hold that key; refuse it and ask the organisation for a new request"
            ) from exc
    previous_key = None
    if rotation:
        previous_key = _check_rotation(paths, doc, member, role, tls_public, path)
    elif (paths.members / f"{member}.json").exists():
        raise PKIError(
            f"{member!r} is already enrolled in this CA; choose another id, or, to rotate its roster key, "
            "have it run `secagg pki request ... --rotate`"
        )
    for record in _member_records(paths):
        if (
            role == "coordinator"
            and record.get("role") == "coordinator"
            and not record.get("revoked")
        ):
            raise PKIError(
                f"{path}: the federation already has a coordinator ({record.get('id')!r}); revoke it first"
            )
        if record.get("roster_key") == roster_key.hex() or roster_key.hex() in record.get(
            "previous_roster_keys", []
        ):
            raise PKIError(f"{path}: this roster key is already enrolled as {record.get('id')!r}")
    return EnrolmentRequest(
        federation=federation,
        member=member,
        role=role,
        csr=csr,
        hosts=hosts,
        roster_key=roster_key,
        audit_key=audit_key,
        previous_roster_key=previous_key,
    )


def _check_rotation(
    paths: CaPaths,
    doc: Mapping[str, Any],
    member: str,
    role: str,
    tls_public: object,
    path: str | os.PathLike[str],
) -> bytes:
    """The enrolled roster key a rotation request replaces, once it is shown to come from that member.

    The request must name an enrolled, unrevoked silo and carry the very certificate the CA issued it (by
    fingerprint), and its CSR must be signed by that certificate's key: only the holder of the member's TLS
    key can ask to re-key it, and the out-of-band confirmation of the new fingerprint still follows.
    """
    record_path = paths.members / f"{member}.json"
    if role != "silo" or not record_path.is_file():
        raise PKIError(
            f"{path}: a rotation request is for an enrolled silo, and {member!r} is not one; make a new "
            "enrolment request without --rotate"
        )
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if record.get("revoked"):
        raise PKIError(f"{path}: {member!r} is revoked; it cannot rotate a key, enrol a new id")
    try:
        cert = x509.load_pem_x509_certificate(str(doc.get("certificate", "")).encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise PKIError(f"{path}: the rotation request carries no valid certificate") from exc
    if certificate_fingerprint(cert) != record.get("certificate_fingerprint") or _spki(
        cert.public_key()
    ) != _spki(tls_public):
        raise PKIError(
            f"{path}: the rotation request is not signed by the TLS key this CA certified for {member!r}; "
            "refuse it and ask the organisation to make it in its enrolled directory"
        )
    return bytes.fromhex(str(record["roster_key"]))


def issue(
    ca_dir: str | os.PathLike[str],
    enrolment: EnrolmentRequest,
    out: str | os.PathLike[str],
    *,
    passphrase: bytes | None,
    validity_days: int = 365,
    now: _dt.datetime | None = None,
    ca_key: str | None = None,
) -> Path:
    """Issue the certificate of a checked request and record the member; write ``out``.

    For a rotation request no certificate is issued (the TLS key stays): the member record takes the new roster
    key and ``out`` is a public receipt naming the old and new keys.

    Args:
        ca_dir: the CA directory.
        enrolment: the request :func:`read_request` checked.
        out: the ISSUED file to write.
        passphrase: of a CA key file (read when needed if ``None``).
        validity_days: the certificate's lifetime.
        now: issuing time (UTC).
        ca_key: the CA key's reference (a ``pkcs11:`` URI) instead of ``CA_DIR/ca.key`` (or ``ca.key.uri``).

    Raises:
        PKIError: ``out`` exists, the CA key does not load (wrong passphrase or PIN, too open, missing token
            object) or is not the key of ``ca.pem``, or writing failed.
    """
    paths = CaPaths.at(ca_dir)
    out = Path(out)
    if out.exists():
        raise PKIError(f"{out} already exists: choose another --out")
    if enrolment.previous_roster_key is not None:
        return _record_rotation(paths, enrolment, enrolment.previous_roster_key, out)
    ca_cert = _load_cert(paths.ca_cert)
    issuer_key = _ca_key(paths, ca_cert, passphrase, ca_key)
    uri = _member_uri(enrolment.federation, enrolment.member, enrolment.role)
    names = [_general_name(h) for h in enrolment.hosts] + [x509.UniformResourceIdentifier(uri)]
    cert = _leaf_certificate(
        ca_cert,
        issuer_key,
        enrolment.csr.public_key(),  # type: ignore[arg-type]
        common_name=enrolment.member,
        server=enrolment.role == "coordinator",
        names=names,
        validity_days=validity_days,
        now=now,
    )
    record = {
        "format": _FORMAT,
        "id": enrolment.member,
        "role": enrolment.role,
        "certificate_fingerprint": certificate_fingerprint(cert),
        "serial": format(cert.serial_number, "x"),
        "roster_key": enrolment.roster_key.hex(),
        "audit_key": enrolment.audit_key.hex() if enrolment.audit_key else None,
    }
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    issued = {
        "format": _FORMAT,
        "kind": _KIND_ISSUED,
        "federation": enrolment.federation,
        "id": enrolment.member,
        "role": enrolment.role,
        "certificate": cert_pem,
        "ca_certificate": ca_cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    }
    try:
        write_new_file(
            paths.members / f"{enrolment.member}.json", _json_bytes(record), private=False
        )
        write_new_file(out, _json_bytes(issued), private=False)
    except OSError as exc:
        raise PKIError(f"issuing the certificate failed: {exc}") from exc
    return out


def _record_rotation(
    paths: CaPaths, enrolment: EnrolmentRequest, previous: bytes, out: Path
) -> Path:
    """Record an enrolled silo's new roster key (its certificate stays) and write the receipt ``out``.

    The member record keeps every key the silo held (``previous_roster_keys``), so an old key is never enrolled
    again; the roster changes only when K governors sign ``roster propose --rotate``.
    """
    record_path = paths.members / f"{enrolment.member}.json"
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if record.get("roster_key") != previous.hex():
        raise PKIError(
            f"{enrolment.member!r}'s record changed while signing; sign the request again"
        )
    record["previous_roster_keys"] = [*record.get("previous_roster_keys", []), previous.hex()]
    record["roster_key"] = enrolment.roster_key.hex()
    receipt = {
        "format": _FORMAT,
        "kind": _KIND_ROTATION,
        "federation": enrolment.federation,
        "id": enrolment.member,
        "old_roster_key": previous.hex(),
        "new_roster_key": enrolment.roster_key.hex(),
    }
    try:
        _replace_file(record_path, _json_bytes(record))
        write_new_file(out, _json_bytes(receipt), private=False)
    except OSError as exc:
        raise PKIError(f"recording the rotation failed: {exc}") from exc
    return out


def revoke(
    ca_dir: str | os.PathLike[str],
    member: str,
    out: str | os.PathLike[str] | None = None,
    *,
    passphrase: bytes | None,
    now: _dt.datetime | None = None,
    ca_key: str | None = None,
) -> Path:
    """Revoke ``member``'s certificate: a new CA-signed CRL (``CA_DIR/crl.pem``, copied to ``out``).

    Raises:
        PKIError: ``member`` is not enrolled or already revoked; the CA key does not load (``ca_key``: its
            ``pkcs11:`` URI instead of ``CA_DIR/ca.key``); writing failed.
    """
    paths = CaPaths.at(ca_dir)
    _governance(paths)
    record_path = paths.members / f"{member}.json"
    if not record_path.is_file():
        raise PKIError(f"{member!r} is not enrolled in this CA")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if record.get("revoked"):
        raise PKIError(f"{member!r} is already revoked")
    if out is not None and Path(out).exists():
        raise PKIError(f"{out} already exists: choose another --out")
    ca_cert = _load_cert(paths.ca_cert)
    issuer_key = _ca_key(paths, ca_cert, passphrase, ca_key)
    previous = load_crl(paths.crl, ca_cert) if paths.crl.is_file() else None
    serials = [int(str(r["serial"]), 16) for r in _member_records(paths) if r.get("revoked")]
    crl = next_crl(
        ca_cert,
        issuer_key,
        [*serials, int(str(record["serial"]), 16)],
        number=(crl_number(previous) + 1) if previous is not None else 1,
        now=_utcnow(now),
    )
    pem = crl.public_bytes(serialization.Encoding.PEM)
    try:
        _replace_file(paths.crl, pem)
        _replace_file(record_path, _json_bytes(record | {"revoked": True}))
        if out is not None:
            write_new_file(Path(out), pem, private=False)
    except OSError as exc:
        raise PKIError(f"writing the revocation list failed: {exc}") from exc
    return Path(out) if out is not None else paths.crl


def propose(
    ca_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    passphrase: bytes | None,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    rotate: Sequence[str] = (),
    handover_to: tuple[Sequence[bytes], int] | None = None,
) -> RosterVersion:
    """Propose the next roster version: the published one plus ``add`` minus ``remove`` (version 1: every silo).

    ``rotate`` lists members whose roster key the CA recorded a rotation for (``sign`` of a ``--rotate``
    request): the version lists them, at the same index, with their new key.

    ``handover_to`` (governor keys, K) hands the federation over: K of the governors in force sign the version,
    and from it on the new set governs (the roster may stay as it is).

    The roster is signed with the consortium key; governors then add their signatures (:func:`sign_roster`).

    Raises:
        PKIError: an id that is not an enrolled silo, is already a member (add) or is not one (remove); an empty
            roster; the consortium key does not load; ``out`` exists.
    """
    paths = CaPaths.at(ca_dir)
    governance = _governance(paths)
    out = Path(out)
    if out.exists():
        raise PKIError(f"{out} already exists: choose another --out")
    enrolled = {
        str(r["id"]): bytes.fromhex(str(r["roster_key"]))
        for r in _member_records(paths)
        if r.get("role") == "silo"
    }
    pinned = RosterVersion.load(paths.roster_version) if paths.roster_version.is_file() else None
    if pinned is None:
        if add or remove or rotate:
            raise PKIError(
                "the first roster version lists every enrolled silo: drop --add/--remove/--rotate"
            )
        members = dict(enrolled)
    else:
        members = dict(pinned.roster.members)
        for silo in add:
            if silo not in enrolled:
                raise PKIError(f"--add {silo}: not an enrolled silo; sign its request first")
            if silo in members:
                raise PKIError(f"--add {silo}: already a member of version {pinned.version}")
            members[silo] = enrolled[silo]
        for silo in remove:
            if silo not in members:
                raise PKIError(f"--remove {silo}: not a member of version {pinned.version}")
            del members[silo]
        for silo in rotate:
            if silo not in members:
                raise PKIError(f"--rotate {silo}: not a member of version {pinned.version}")
            if enrolled.get(silo) == members[silo]:
                raise PKIError(
                    f"--rotate {silo}: no new roster key is recorded for it; sign its `request --rotate` "
                    "first"
                )
            members[silo] = enrolled[silo]
    if not members:
        raise PKIError("the roster would have no member: enrol a silo first")
    handover = None
    if handover_to is not None:
        if pinned is None:
            raise PKIError(
                "the first roster version is governed by governance.json: propose a handover later"
            )
        try:
            handover = check_governance(*handover_to)
        except ValueError as exc:
            raise PKIError(f"--governor/--quorum: {exc}") from exc
    consortium_key = load_signer(
        paths.consortium_key, passphrase, algorithm="ed25519"
    ).ed25519_key()
    roster = Roster.create(
        federation=str(governance["federation"]), members=members, consortium_key=consortium_key
    )
    proposal = RosterVersion(
        version=1 if pinned is None else pinned.version + 1,
        previous="" if pinned is None else pinned.digest(),
        roster=roster,
        governance=handover,
    )
    try:
        write_new_file(out, (proposal.dumps() + "\n").encode(), private=False)
    except OSError as exc:
        raise PKIError(f"writing {out} failed: {exc}") from exc
    return proposal


def sign_roster(
    governor_dir: str | os.PathLike[str],
    proposal: str | os.PathLike[str],
    *,
    passphrase: bytes | None,
    key: str | None = None,
) -> RosterVersion:
    """Add this governor's signature to the roster version file ``proposal`` (rewritten in place).

    Args:
        governor_dir: GOV_DIR (its ``governor.key``, or ``governor.key.uri`` for a key in a token).
        proposal: the roster version file.
        passphrase: of a governor key file (read when needed if ``None``).
        key: the governor key's ``pkcs11:`` URI instead of GOV_DIR's.

    Raises:
        PKIError: the proposal is malformed, or the governor key does not load.
    """
    version = RosterVersion.load(proposal)
    reference = key if key is not None else Path(governor_dir) / "governor.key"
    signer = load_signer(reference, passphrase, algorithm="ed25519")
    own = Path(governor_dir) / "governor.pub"
    if own.is_file() and _read_hex(own) != signer.public_bytes_raw():
        raise PKIError(
            f"the governor key {signer!r} is not the one {own} names: sign with this governor's own key"
        )
    key_object = signer.ed25519_key()
    signed = version.signed_by(key_object)
    try:
        _replace_file(Path(proposal), (signed.dumps() + "\n").encode())
    except OSError as exc:
        raise PKIError(f"writing {proposal} failed: {exc}") from exc
    return signed


def publish(
    ca_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    roster_version: str | os.PathLike[str],
    passphrase: bytes | None,
    ca_key: str | None = None,
) -> Path:
    """Write the public federation file every organisation installs, with a roster version K governors signed.

    The version must verify (consortium key, K of N governors) and extend the one last published (or be it);
    it becomes the CA's published version (``roster.json``, ``roster-version.json``). The CA key signs the
    federation's public keys (consortium, audit, governors, quorum), so a member that pinned the CA certificate
    (confirmed out of band) takes them from no one else.

    Raises:
        PKIError: the version does not verify or extend; the CA key does not load; ``out`` exists.
    """
    paths = CaPaths.at(ca_dir)
    governance = _governance(paths)
    out = Path(out)
    if out.exists():
        raise PKIError(f"{out} already exists: choose another --out")
    version = RosterVersion.load(roster_version)
    governors, quorum = governance_pins(governance)
    version.verify(
        consortium_key=bytes.fromhex(str(governance["consortium_public_key"])),
        governors=governors,
        quorum=quorum,
        federation=str(governance["federation"]),
    )
    pinned = RosterVersion.load(paths.roster_version) if paths.roster_version.is_file() else None
    if pinned is None or pinned.digest() != version.digest():
        check_extends(version, pinned)
    coordinators = [
        r for r in _member_records(paths) if r.get("role") == "coordinator" and not r.get("revoked")
    ]
    audit_key = coordinators[0]["audit_key"] if coordinators else None
    issuer_key = _ca_key(paths, _load_cert(paths.ca_cert), passphrase, ca_key)
    statement = _federation_statement(
        str(governance["federation"]),
        quorum,
        governors,
        bytes.fromhex(str(governance["consortium_public_key"])),
        bytes.fromhex(audit_key) if audit_key is not None else None,
    )
    doc = {
        "format": _FORMAT,
        "kind": _KIND_FEDERATION,
        "federation": governance["federation"],
        "ca_certificate": paths.ca_cert.read_text(encoding="ascii"),
        "consortium_public_key": governance["consortium_public_key"],
        "roster_version": version.dumps(),
        "audit_public_key": audit_key,
        "quorum": quorum,
        "governors": [g.hex() for g in governors],
        "ca_signature": issuer_key.sign(statement, ec.ECDSA(hashes.SHA256())).hex(),
    }
    try:
        _replace_file(paths.roster_version, (version.dumps() + "\n").encode())
        _replace_file(paths.roster, (version.roster.dumps() + "\n").encode())
        if (
            version.governance is not None
        ):  # the next versions are checked against the new governors
            _replace_file(
                paths.governance, _json_bytes(governance | governance_json(version.governance))
            )
        write_new_file(out, _json_bytes(doc), private=False)
    except OSError as exc:
        raise PKIError(f"publishing failed: {exc}") from exc
    return out


def install(
    directory: str | os.PathLike[str],
    document: str | os.PathLike[str],
    *,
    ca_fingerprint: str | None = None,
    now: _dt.datetime | None = None,
) -> str:
    """Install an issued certificate or a federation file into an organisation's directory.

    Args:
        directory: the ORG_DIR ``request`` wrote.
        document: the ISSUED file from ``sign`` or the federation file from ``publish``.
        ca_fingerprint: the CA certificate's SHA-256 fingerprint, confirmed out of band (optional on the
            first install; later installs are checked against the installed ``ca.pem``).
        now: the validation time (UTC).

    Returns:
        What was installed, one line (for the CLI).

    Raises:
        PKIError: another federation, id or role; a certificate that is not for this organisation's key, does
            not chain to the CA or breaks its role's policy; a CA that differs from the pinned one; a roster that
            does not verify or lacks this silo's key.
    """
    paths = OrgPaths.at(directory)
    mine = _read_json(paths.request, kind=_KIND_REQUEST, what="enrolment request")
    doc = _read_json(Path(document), kind=None, what="issued certificate or federation file")
    if doc.get("kind") == KIND_ROSTER_VERSION:
        if not paths.governance.is_file():
            raise PKIError(
                f"{paths.directory}: install the federation file before a roster version"
            )
        return _install_roster_version(
            paths, mine, RosterVersion.load(document), governance=None, document=document
        )
    if doc.get("federation") != mine["federation"]:
        raise PKIError(
            f"{document} is for federation {doc.get('federation')!r}, but {paths.directory} enrolled in "
            f"{mine['federation']!r}: ask the CA operator of {mine['federation']!r} for yours"
        )
    try:
        ca_cert = x509.load_pem_x509_certificate(str(doc.get("ca_certificate", "")).encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise PKIError(f"{document}: the CA certificate is malformed") from exc
    fingerprint = certificate_fingerprint(ca_cert)
    if ca_fingerprint is not None and fingerprint != ca_fingerprint.lower().replace(":", ""):
        raise PKIError(
            f"{document}: the CA certificate's fingerprint {fingerprint} is not the one you confirmed; "
            "do not install it"
        )
    if paths.ca_cert.is_file() and _load_cert(paths.ca_cert) != ca_cert:
        raise PKIError(
            f"{document}: the CA differs from the one installed in {paths.ca_cert}; do not install it"
        )
    if doc["kind"] == _KIND_ISSUED:
        return _install_issued(paths, mine, doc, ca_cert, document, now)
    if doc["kind"] == _KIND_FEDERATION:
        if not paths.ca_cert.is_file():
            raise PKIError(
                f"{paths.directory}: install your issued certificate before the federation file"
            )
        return _install_federation(paths, mine, doc, document)
    raise PKIError(f"{document} is neither an issued certificate nor a federation file")


def _install_issued(
    paths: OrgPaths,
    mine: Mapping[str, Any],
    doc: Mapping[str, Any],
    ca_cert: x509.Certificate,
    document: str | os.PathLike[str],
    now: _dt.datetime | None,
) -> str:
    if (doc.get("id"), doc.get("role")) != (mine["id"], mine["role"]):
        raise PKIError(
            f"{document} was issued to {doc.get('role')} {doc.get('id')!r}, not to this "
            f"{mine['role']} {mine['id']!r}: install the file issued for your request"
        )
    try:
        cert = x509.load_pem_x509_certificate(str(doc.get("certificate", "")).encode("ascii"))
        csr = x509.load_pem_x509_csr(str(mine["csr"]).encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise PKIError(f"{document}: the certificate is malformed") from exc
    if _spki(cert.public_key()) != _spki(csr.public_key()):
        raise PKIError(f"{document}: the certificate is not for this organisation's TLS key")
    builder = PolicyBuilder().store(Store([ca_cert])).time(_utcnow(now))
    try:
        if mine["role"] == "silo":
            verified = builder.build_client_verifier().verify(cert, [])
            uris = verified.subjects or []
            expected = x509.UniformResourceIdentifier(spiffe_id(mine["federation"], mine["id"]))
            if expected not in uris:
                raise PKIError(f"{document}: the certificate does not name {expected.value}")
        else:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            hosts = [n for n in san if isinstance(n, x509.DNSName | x509.IPAddress)]
            if not hosts:
                raise PKIError(f"{document}: the coordinator certificate names no host")
            builder.build_server_verifier(hosts[0]).verify(cert, [])
            if (
                ExtendedKeyUsageOID.SERVER_AUTH
                not in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            ):
                raise PKIError(f"{document}: not a serverAuth certificate")
    except (VerificationError, x509.ExtensionNotFound) as exc:
        raise PKIError(
            f"{document}: the certificate does not chain to its CA under the {mine['role']} policy "
            f"({exc}); ask the CA operator to issue it again"
        ) from exc
    try:
        write_new_file(paths.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
        if not paths.ca_cert.is_file():
            write_new_file(
                paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False
            )
    except OSError as exc:
        raise PKIError(f"installing into {paths.directory} failed: {exc}") from exc
    return (
        f"installed {paths.cert} for {mine['role']} {mine['id']!r}; CA {paths.ca_cert} fingerprint "
        f"{certificate_fingerprint(ca_cert)} (confirm it out of band)"
    )


def _install_federation(
    paths: OrgPaths,
    mine: Mapping[str, Any],
    doc: Mapping[str, Any],
    document: str | os.PathLike[str],
) -> str:
    governance = {"governors": doc.get("governors"), "quorum": doc.get("quorum")}
    governance_pins(governance)  # well-formed before anything is written
    try:
        version = RosterVersion.loads(str(doc["roster_version"]))
        consortium_key = bytes.fromhex(str(doc["consortium_public_key"]))
        audit_key = doc.get("audit_public_key")
        audit = bytes.fromhex(audit_key) if audit_key is not None else None
    except (ValueError, KeyError, TypeError) as exc:
        raise PKIError(
            f"{document}: malformed federation file; ask the CA operator for it again"
        ) from exc
    governors, quorum = governance_pins(governance)
    statement = _federation_statement(
        str(mine["federation"]), quorum, governors, consortium_key, audit
    )
    ca_public = _load_cert(paths.ca_cert).public_key()
    try:
        assert isinstance(ca_public, ec.EllipticCurvePublicKey)
        ca_public.verify(
            bytes.fromhex(str(doc.get("ca_signature", ""))), statement, ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, ValueError, AssertionError) as exc:
        raise PKIError(
            f"{document}: the consortium, audit and governor keys are not signed by the pinned CA; do not "
            "install it and ask the CA operator for the file again"
        ) from exc
    if (
        paths.consortium_public_key.is_file()
        and _read_hex(paths.consortium_public_key) != consortium_key
    ):
        raise PKIError(
            f"{document}: the consortium key differs from the one installed; do not install it"
        )
    if paths.governance.is_file() and json.loads(paths.governance.read_text()) != governance:
        raise PKIError(
            f"{document}: the governors differ from the ones installed; do not install it"
        )
    line = _install_roster_version(
        paths,
        mine,
        version,
        governance=governance,
        document=document,
        consortium_key=consortium_key,
    )
    try:
        if version.governance is None:  # else the version's own, written by _install_roster_version
            _replace_file(paths.governance, _json_bytes(governance))
        _replace_file(paths.consortium_public_key, _hex_line(consortium_key))
        if audit is not None and mine["role"] == "silo":
            _replace_file(paths.audit_public_key, _hex_line(audit))
    except OSError as exc:
        raise PKIError(f"installing into {paths.directory} failed: {exc}") from exc
    return f"{line}; consortium key {consortium_key.hex()}"


def _install_roster_version(
    paths: OrgPaths,
    mine: Mapping[str, Any],
    version: RosterVersion,
    *,
    governance: Mapping[str, Any] | None,
    document: str | os.PathLike[str],
    consortium_key: bytes | None = None,
) -> str:
    """Verify ``version`` against the pins (or, on first install, the federation file's) and install it."""
    if governance is None:
        governance = json.loads(paths.governance.read_text(encoding="utf-8"))
    governors, quorum = governance_pins(governance)
    if consortium_key is None:
        consortium_key = _read_hex(paths.consortium_public_key)
    try:
        version.verify(
            consortium_key=consortium_key,
            governors=governors,
            quorum=quorum,
            federation=str(mine["federation"]),
        )
    except PKIError as exc:
        raise PKIError(f"{document}: {exc}") from exc
    pinned = RosterVersion.load(paths.roster_version) if paths.roster_version.is_file() else None
    if pinned is not None and pinned.digest() == version.digest():
        return f"roster version {version.version} is already installed in {paths.roster}"
    try:
        check_extends(version, pinned)
    except PKIError as exc:
        raise PKIError(f"{document}: {exc}") from exc
    roster = version.roster
    rotation = PendingRotation.at(paths.signing_key) if mine["role"] == "silo" else None
    listed = roster.members.get(mine["id"])
    rotated = rotation is not None and listed == rotation.public_key
    if mine["role"] == "silo" and listed != bytes.fromhex(mine["roster_key"]) and not rotated:
        raise PKIError(
            f"{document}: roster version {version.version} does not list {mine['id']!r} with a roster key "
            "this silo holds; ask the governors for a version that adds it"
        )
    try:
        _replace_file(paths.roster, (roster.dumps() + "\n").encode())
        if version.governance is not None:  # handed over: the next versions need the new governors
            _replace_file(paths.governance, _json_bytes(governance_json(version.governance)))
        _replace_file(paths.roster_version, (version.dumps() + "\n").encode())
    except OSError as exc:
        raise PKIError(f"installing into {paths.directory} failed: {exc}") from exc
    if rotated and rotation is not None:
        rotation.complete()
    return (
        f"installed roster version {version.version} of {len(roster.members)} silos "
        f"({len(version.valid_signers(governors))} of {len(governors)} governors signed, {quorum} required) "
        f"into {paths.roster}" + ("; the rotated roster key is now signing.key" if rotated else "")
    )


def _new_key(path: Path, passphrase: bytes | None, uri: str | None, *, algorithm: Algorithm) -> Any:
    """A new private key at ``path`` (encrypted file), or generated in the token ``uri`` names (then
    ``path``.uri holds the URI, no PIN). Returns a ``cryptography`` key object that signs with it."""
    try:
        if uri is not None:
            signer = generate_token_key(uri, algorithm=algorithm)
            write_new_file(reference_file(path), (str(signer.uri) + "\n").encode(), private=False)
            return signer.ed25519_key() if algorithm == "ed25519" else signer.ec_key()
        if passphrase is None:
            raise PKIError(f"no passphrase to encrypt {path}")
        key: Any = (
            Ed25519PrivateKey.generate()
            if algorithm == "ed25519"
            else ec.generate_private_key(ec.SECP256R1())
        )
        write_private_key(path, key, passphrase)
        return key
    except ValueError as exc:
        raise PKIError(f"{uri}: {exc}") from exc
    except OSError as exc:
        raise PKIError(f"writing the key {path} failed: {exc}") from exc


def _ca_key(
    paths: CaPaths, ca_cert: x509.Certificate, passphrase: bytes | None, override: str | None
) -> ec.EllipticCurvePrivateKey:
    """The CA key (file, ``ca.key.uri`` or ``override``), checked to be the key of ``ca.pem``."""
    signer = load_signer(
        override if override is not None else paths.ca_key, passphrase, algorithm="ecdsa-p256"
    )
    if _spki(signer.public_key) != _spki(ca_cert.public_key()):
        raise PKIError(
            f"the CA key {signer!r} is not the key of {paths.ca_cert}: name this CA's own key"
        )
    return signer.ec_key()


def _read_hex(path: Path) -> bytes:
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        raise PKIError(f"cannot read the public key {path}") from exc


def _check_request_names(
    csr: x509.CertificateSigningRequest,
    federation: str,
    member: str,
    role: Role,
    path: str | os.PathLike[str],
) -> tuple[str, ...]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise PKIError(f"{path}: the CSR names no SPIFFE id; make the request with secagg") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if uris != [_member_uri(federation, member, role)]:
        raise PKIError(
            f"{path}: the CSR must carry exactly the URI {_member_uri(federation, member, role)}"
        )
    hosts = [str(h) for h in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]
    others = len(san) - len(uris) - len(hosts)
    if others or (role == "silo" and hosts) or (role == "coordinator" and not hosts):
        rule = (
            "its SPIFFE id and at least one host, nothing else"
            if role == "coordinator"
            else "its SPIFFE id only, no host"
        )
        raise PKIError(f"{path}: a {role} certificate names {rule}; make a new request")
    return tuple(hosts)


def _federation_statement(
    federation: str,
    quorum: int,
    governors: Sequence[bytes],
    consortium_key: bytes,
    audit_key: bytes | None,
) -> bytes:
    """What the CA signs in a federation file: every public key a member pins from it."""
    return encode_fields(
        "secagg federation statement",
        _FORMAT,
        federation,
        quorum,
        consortium_key,
        audit_key or b"",
        *governors,
    )


def _member_uri(federation: str, member: str, role: Role) -> str:
    return spiffe_id(federation, member) if role == "silo" else f"spiffe://{federation}/coordinator"


def _pop_payload(
    purpose: str,
    federation: str,
    member: str,
    role: str,
    spki: bytes,
    roster_key: bytes,
    audit_key: bytes | None,
) -> bytes:
    return encode_fields(
        _POP_LABEL, _FORMAT, purpose, federation, member, role, spki, roster_key, audit_key or b""
    )


def _fingerprints(tls_public: object, roster_key: bytes, audit_key: bytes | None) -> dict[str, str]:
    out = {
        "tls key": hashlib.sha256(_spki(tls_public)).hexdigest(),
        "roster key": hashlib.sha256(roster_key).hexdigest(),
    }
    if audit_key is not None:
        out["audit key"] = hashlib.sha256(audit_key).hexdigest()
    return out


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _governance(paths: CaPaths) -> dict[str, Any]:
    try:
        doc = json.loads(paths.governance.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PKIError(
            f"{paths.directory} is not a CA directory (run `secagg pki ca init` first)"
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise PKIError(f"{paths.governance}: unknown format")
    return doc


def _member_records(paths: CaPaths) -> list[dict[str, Any]]:
    out = []
    for record in sorted(paths.members.glob("*.json")):
        out.append(json.loads(record.read_text(encoding="utf-8")))
    return out


def _read_json(path: Path, *, kind: str | None, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PKIError(f"cannot read the {what} {path}: not a readable JSON file") from exc
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise PKIError(f"{path} is not a secagg {what} (unknown format)")
    if kind is not None and doc.get("kind") != kind:
        raise PKIError(f"{path} is not a secagg {what}")
    return doc


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PKIError(f"cannot read the certificate {path}") from exc


def _new_directory(directory: str | os.PathLike[str], *, what: str) -> Path:
    root = Path(directory)
    try:
        root.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
        if any(root.iterdir()):
            raise PKIError(
                f"{root} is not empty: refusing to overwrite an existing {what} directory "
                "(choose a new directory)"
            )
    except OSError as exc:
        raise PKIError(f"cannot create the {what} directory {root}: {exc}") from exc
    return root


def _replace_file(path: Path, data: bytes) -> None:
    """Atomically replace a public file (write a sibling, fsync, rename)."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    write_new_file(partial, data, private=False)
    os.replace(partial, path)


def _json_bytes(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _hex_line(key: bytes) -> bytes:
    return (key.hex() + "\n").encode("ascii")
