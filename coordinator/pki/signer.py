"""Signers: the CA, governor and audit keys sign the same way whether they lie in a file or in a PKCS#11 token.

A :class:`Signer` has a public key and signs bytes. :class:`FileSigner` wraps a key loaded from an encrypted
PKCS#8 file (:mod:`coordinator.pki.custody`); :class:`Pkcs11Signer` signs inside a PKCS#11 token (an HSM,
tested against SoftHSM2), named by an RFC 7512 URI such as ``pkcs11:token=secagg;object=ca;type=private``.
:func:`load_signer` picks one from a key reference: an encrypted PEM file, a file holding one ``pkcs11:`` URI
(``ca.key.uri``, ``governor.key.uri``, ``audit.key.uri``), or the URI itself.

Two algorithms, the ones the keys already use: ``ecdsa-p256`` (the TLS CA: ECDSA P-256 with SHA-256, what every
gRPC TLS stack verifies) and ``ed25519`` (governor, consortium and audit keys, RFC 8032).

Notes:
    - ``cryptography`` 50 signs X.509 certificates, CRLs and CSRs with any object that implements its private
      key interface (``EllipticCurvePrivateKey``, ``Ed25519PrivateKey``): its builders call the key's ``sign``
      (the maintainers' answer to external signers, pyca/cryptography issue 11616). :meth:`Signer.ec_key` and
      :meth:`Signer.ed25519_key` return such objects, so the certificate, CRL, roster and checkpoint code is the
      same for both custody kinds and no DER is assembled by hand.
    - SoftHSM2 2.6.1 offers ``CKM_ECDSA`` (the hash is computed outside, FIPS 186-5 section 6.4.1 step 1) but not
      ``CKM_ECDSA_SHA256``, and ``CKM_EDDSA`` with ``CKM_EC_EDWARDS_KEY_PAIR_GEN`` (PKCS#11 3.0 section 2.3.14).
      So the ECDSA signer hashes with SHA-256 here and the token signs the digest; the token returns ``r || s``
      (PKCS#11 3.0 section 2.3.1), re-encoded as the DER ``Ecdsa-Sig-Value`` X.509 expects (RFC 3279 section
      2.2.3).
    - Keys made by :func:`generate_token_key` are token objects with ``CKA_SENSITIVE`` true and
      ``CKA_EXTRACTABLE`` false (PKCS#11 3.0 section 4.9): the private key never leaves the token.
    - The PIN is never an argument, like the passphrase: it comes from the file ``$SECAGG_PKCS11_PIN_FILE``
      names (owner-only), from the URI's ``pin-source`` (a file, RFC 7512 section 2.3), or a terminal prompt.
      A URI carrying ``pin-value`` is refused. The module (the token's PKCS#11 library) comes from the URI's
      ``module-path`` or ``$SECAGG_PKCS11_MODULE``.
    - Token operations are serialised by one process-wide lock, each in its own logged-in session: PKCS#11
      login state is per application, so two sessions logging in concurrently would collide
      (``CKR_USER_ALREADY_LOGGED_IN``, PKCS#11 3.0 section 5.6).
"""

from __future__ import annotations

import abc
import getpass
import hashlib
import os
import secrets
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, unquote, unquote_to_bytes

from cryptography import utils as crypto_utils
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coordinator.errors import PKIError
from coordinator.pki.custody import load_encrypted_private_key, read_owner_only_line

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

__all__ = [
    "MODULE_ENV",
    "PIN_ENV",
    "Algorithm",
    "FileSigner",
    "Pkcs11Signer",
    "Pkcs11Uri",
    "Signer",
    "generate_token_key",
    "load_signer",
    "reference_file",
]

Algorithm = Literal["ecdsa-p256", "ed25519"]
MODULE_ENV = "SECAGG_PKCS11_MODULE"
"""Environment variable naming the PKCS#11 module (the token's shared library) when the URI has none."""
PIN_ENV = "SECAGG_PKCS11_PIN_FILE"
"""Environment variable naming the file (mode 0600) whose first line is the token's user PIN."""

_URI_SCHEME = "pkcs11:"
_PATH_ATTRIBUTES = frozenset({"token", "serial", "object", "id", "type"})
_QUERY_ATTRIBUTES = frozenset({"module-path", "pin-source"})
_P256_OID = "1.2.840.10045.3.1.7"
_ED25519_OID = "1.3.101.112"
_TOKEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class Pkcs11Uri:
    """A PKCS#11 URI (RFC 7512) naming one private key in one token.

    Attributes:
        token: the token label (``token=``), or ``None`` to match by ``serial``.
        serial: the token serial number (``serial=``).
        object: the key's label (``CKA_LABEL``, ``object=``).
        id: the key's ``CKA_ID`` (``id=``, percent-encoded bytes).
        module_path: the PKCS#11 library (``?module-path=``).
        pin_source: a file holding the PIN (``?pin-source=``, a path or ``file:`` URI).
    """

    token: str | None = None
    serial: str | None = None
    object: str | None = None
    id: bytes | None = None
    module_path: str | None = None
    pin_source: str | None = None

    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        """Parse ``pkcs11:attr=value;...?query=value&...``.

        Raises:
            ValueError: not a ``pkcs11:`` URI; an unknown or repeated attribute; ``pin-value`` (a PIN must not
                be in a URI); no token (``token`` or ``serial``) or no key (``object`` or ``id``); a ``type``
                other than ``private``.
        """
        if not text.startswith(_URI_SCHEME):
            raise ValueError(f"not a PKCS#11 URI (it must start with {_URI_SCHEME!r})")
        path, _, query = text[len(_URI_SCHEME) :].partition("?")
        fields: dict[str, str] = {}
        raw_id: bytes | None = None
        for part, allowed, separator in (
            (path, _PATH_ATTRIBUTES, ";"),
            (query, _QUERY_ATTRIBUTES, "&"),
        ):
            for item in filter(None, part.split(separator)):
                name, equals, value = item.partition("=")
                if name == "pin-value":
                    raise ValueError(
                        "a PKCS#11 URI must not carry the PIN (pin-value): put it in a file (mode 0600) and "
                        f"name that file with ${PIN_ENV} or pin-source="
                    )
                if not equals or name not in allowed:
                    raise ValueError(
                        f"unsupported PKCS#11 URI attribute {name!r}: use {', '.join(sorted(allowed))}"
                    )
                if name in fields:
                    raise ValueError(f"the PKCS#11 URI names {name!r} twice")
                fields[name] = value
                if name == "id":
                    raw_id = unquote_to_bytes(value)
        if fields.get("type", "private") != "private":
            raise ValueError("the PKCS#11 URI must name a private key (type=private)")
        uri = cls(
            token=unquote(fields["token"]) if "token" in fields else None,
            serial=unquote(fields["serial"]) if "serial" in fields else None,
            object=unquote(fields["object"]) if "object" in fields else None,
            id=raw_id,
            module_path=unquote(fields["module-path"]) if "module-path" in fields else None,
            pin_source=unquote(fields["pin-source"]) if "pin-source" in fields else None,
        )
        if uri.token is None and uri.serial is None:
            raise ValueError("the PKCS#11 URI names no token: add token=<label>")
        if uri.object is None and uri.id is None:
            raise ValueError("the PKCS#11 URI names no key: add object=<label>")
        return uri

    def __str__(self) -> str:
        path = []
        if self.token is not None:
            path.append(f"token={quote(self.token, safe='')}")
        if self.serial is not None:
            path.append(f"serial={quote(self.serial, safe='')}")
        if self.object is not None:
            path.append(f"object={quote(self.object, safe='')}")
        if self.id is not None:
            path.append("id=" + "".join(f"%{b:02x}" for b in self.id))
        path.append("type=private")
        query = []
        if self.module_path is not None:
            query.append(f"module-path={quote(self.module_path, safe='/')}")
        if self.pin_source is not None:
            query.append(f"pin-source={quote(self.pin_source, safe='/:')}")
        return _URI_SCHEME + ";".join(path) + ("?" + "&".join(query) if query else "")

    @property
    def key_name(self) -> str:
        """How messages name the key (label or id, and token): never the PIN."""
        key = self.object if self.object is not None else (self.id or b"").hex()
        return f"key {key!r} in token {self.token or self.serial!r}"


class Signer(abc.ABC):
    """A private key that signs: in a file or in a token. ``repr`` never shows key material.

    :meth:`sign` returns what ``cryptography`` returns for the same key: a DER ECDSA signature over SHA-256 of
    ``data`` for ``ecdsa-p256``, the 64-byte RFC 8032 signature for ``ed25519``.
    """

    algorithm: Algorithm

    @property
    @abc.abstractmethod
    def public_key(self) -> ec.EllipticCurvePublicKey | Ed25519PublicKey:
        """The public key."""

    @abc.abstractmethod
    def sign(self, data: bytes) -> bytes:
        """Sign ``data``."""

    @abc.abstractmethod
    def ec_key(self) -> ec.EllipticCurvePrivateKey:
        """A ``cryptography`` ECDSA key that signs through this signer (for X.509 builders).

        Raises:
            PKIError: this is not an ``ecdsa-p256`` signer.
        """

    @abc.abstractmethod
    def ed25519_key(self) -> Ed25519PrivateKey:
        """A ``cryptography`` Ed25519 key that signs through this signer (rosters, checkpoints).

        Raises:
            PKIError: this is not an ``ed25519`` signer.
        """

    def public_bytes_raw(self) -> bytes:
        """The raw public key: 32 bytes for Ed25519, the uncompressed point for P-256."""
        public = self.public_key
        if isinstance(public, Ed25519PublicKey):
            return public.public_bytes_raw()
        return public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )


class FileSigner(Signer):
    """A key loaded from an encrypted PKCS#8 file (:func:`coordinator.pki.custody.load_encrypted_private_key`).

    Raises:
        PKIError: the key is neither ECDSA P-256 nor Ed25519.
    """

    def __init__(self, key: PrivateKeyTypes, *, name: str = "key file") -> None:
        if isinstance(key, Ed25519PrivateKey):
            self.algorithm = "ed25519"
        elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
            self.algorithm = "ecdsa-p256"
        else:
            raise PKIError(f"{name} holds a {type(key).__name__}: use ECDSA P-256 or Ed25519")
        self._key = key
        self._name = name

    def __repr__(self) -> str:
        return f"FileSigner({self._name}, {self.algorithm}, key=<hidden>)"

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey | Ed25519PublicKey:
        """The public key."""
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (ECDSA with SHA-256, or Ed25519)."""
        if isinstance(self._key, Ed25519PrivateKey):
            return self._key.sign(data)
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def ec_key(self) -> ec.EllipticCurvePrivateKey:
        """The ECDSA key itself."""
        if not isinstance(self._key, ec.EllipticCurvePrivateKey):
            raise PKIError(
                f"{self._name} holds an Ed25519 key, not the ECDSA P-256 key needed here"
            )
        return self._key

    def ed25519_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key itself."""
        if not isinstance(self._key, Ed25519PrivateKey):
            raise PKIError(f"{self._name} holds an ECDSA key, not the Ed25519 key needed here")
        return self._key


class Pkcs11Signer(Signer):
    """A private key inside a PKCS#11 token; every signature is made by the token.

    Args:
        uri: the key (RFC 7512).

    Raises:
        PKIError: the ``hsm`` extra is missing; no module or PIN; the module does not load; no such token; a
            wrong PIN; no such key, several keys matching, or a key of another algorithm. One line each.
    """

    def __init__(self, uri: Pkcs11Uri | str) -> None:
        self.uri = uri if isinstance(uri, Pkcs11Uri) else Pkcs11Uri.parse(uri)
        self._module = _module_path(self.uri)
        self._pin = _read_pin(self.uri)
        with self._session() as (session, attribute, private):
            self.algorithm, self._public = _describe(session, attribute, private, self.uri)

    def __repr__(self) -> str:
        return f"Pkcs11Signer({self.uri.key_name}, {self.algorithm})"

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey | Ed25519PublicKey:
        """The public key, read from the token's public key object with the same label or id."""
        return self._public

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` in the token (``CKM_ECDSA`` over SHA-256 of ``data``, or ``CKM_EDDSA``)."""
        import pkcs11

        with self._session() as (_, _attribute, private):
            try:
                if self.algorithm == "ed25519":
                    return bytes(private.sign(data, mechanism=pkcs11.Mechanism.EDDSA))
                digest = hashlib.sha256(data).digest()
                raw = bytes(private.sign(digest, mechanism=pkcs11.Mechanism.ECDSA))
            except pkcs11.PKCS11Error as exc:
                raise PKIError(
                    f"the token refused to sign with {self.uri.key_name} ({type(exc).__name__}): check the "
                    "key may sign (CKA_SIGN) and the token is present"
                ) from exc
        half = len(raw) // 2
        return utils.encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    def ec_key(self) -> ec.EllipticCurvePrivateKey:
        """An ``EllipticCurvePrivateKey`` whose ``sign`` is this token's."""
        if self.algorithm != "ecdsa-p256":
            raise PKIError(
                f"{self.uri.key_name} is an Ed25519 key, not the ECDSA P-256 key needed here"
            )
        return _TokenEcKey(self)

    def ed25519_key(self) -> Ed25519PrivateKey:
        """An ``Ed25519PrivateKey`` whose ``sign`` is this token's."""
        if self.algorithm != "ed25519":
            raise PKIError(f"{self.uri.key_name} is an ECDSA key, not the Ed25519 key needed here")
        return _TokenEd25519Key(self)

    @contextmanager
    def _session(self) -> Iterator[tuple[Any, Any, Any]]:
        """A logged-in session and the private key object (under the process-wide token lock)."""
        pkcs11 = _pkcs11()
        with _TOKEN_LOCK:
            token = _token(pkcs11, self._module, self.uri)
            try:
                session = token.open(user_pin=self._pin.decode("utf-8"))
            except pkcs11.PinIncorrect as exc:
                raise PKIError(
                    f"wrong PIN for token {self.uri.token or self.uri.serial!r}: check the file ${PIN_ENV} "
                    "(or pin-source) names; the token locks after repeated failures"
                ) from exc
            except pkcs11.PKCS11Error as exc:
                raise PKIError(
                    f"cannot log in to token {self.uri.token or self.uri.serial!r} "
                    f"({type(exc).__name__}): check the PIN and the token"
                ) from exc
            try:
                yield session, pkcs11.Attribute, _find_key(pkcs11, session, self.uri)
            finally:
                session.close()


def load_signer(
    reference: str | os.PathLike[str],
    passphrase: bytes | None = None,
    *,
    algorithm: Algorithm,
) -> Signer:
    """The signer a key reference names: a ``pkcs11:`` URI, a file holding one, or an encrypted PEM key file.

    Args:
        reference: ``pkcs11:...``, or a path. A path that does not exist is looked up as ``<path>.uri`` too
            (:func:`reference_file`), so ``CA_DIR/ca.key`` finds a CA key kept in a token.
        passphrase: for a key file (prompted or read from ``$SECAGG_PASSPHRASE_FILE`` when ``None``).
        algorithm: what the key must be.

    Raises:
        PKIError: no such file; the key does not load or is of another algorithm (one line naming it).
    """
    text = os.fspath(reference)
    if not text.startswith(_URI_SCHEME):
        path = Path(text)
        if not path.exists() and reference_file(path).is_file():
            path = reference_file(path)
        try:
            head = path.read_bytes()[: len(_URI_SCHEME)] if path.is_file() else b""
        except OSError as exc:
            raise PKIError(f"cannot read the key {path}: {exc.strerror}") from exc
        if head != _URI_SCHEME.encode():
            signer: Signer = FileSigner(
                load_encrypted_private_key(path, passphrase), name=str(path)
            )
            _check_algorithm(signer, algorithm, str(path))
            return signer
        text = path.read_text(encoding="utf-8").strip()
    try:
        uri = Pkcs11Uri.parse(text)
    except ValueError as exc:
        raise PKIError(f"{reference}: {exc}") from exc
    signer = Pkcs11Signer(uri)
    _check_algorithm(signer, algorithm, uri.key_name)
    return signer


def reference_file(key_path: Path) -> Path:
    """Where a key kept in a token is referenced instead of ``key_path``: ``<key_path>.uri`` (public, no PIN)."""
    return key_path.with_name(key_path.name + ".uri")


def generate_token_key(uri: Pkcs11Uri | str, *, algorithm: Algorithm) -> Pkcs11Signer:
    """Generate a non-extractable key pair inside the token, labelled and identified as ``uri`` says.

    Raises:
        PKIError: a key with that label or id already exists in the token (an existing key is never
            replaced), or any error :class:`Pkcs11Signer` raises.
    """
    uri = uri if isinstance(uri, Pkcs11Uri) else Pkcs11Uri.parse(uri)
    pkcs11 = _pkcs11()
    from pkcs11.util.ec import encode_named_curve_parameters

    module, pin = _module_path(uri), _read_pin(uri)
    with _TOKEN_LOCK:
        token = _token(pkcs11, module, uri)
        try:
            session = token.open(rw=True, user_pin=pin.decode("utf-8"))
        except pkcs11.PinIncorrect as exc:
            raise PKIError(
                f"wrong PIN for token {uri.token or uri.serial!r}: check the file ${PIN_ENV} names"
            ) from exc
        try:
            if list(session.get_objects(_match(pkcs11, uri, pkcs11.ObjectClass.PRIVATE_KEY))):
                raise PKIError(
                    f"{uri.key_name} already exists: refusing to replace a key; choose another object="
                )
            key_id = uri.id if uri.id is not None else secrets.token_bytes(16)
            attribute = pkcs11.Attribute
            if algorithm == "ed25519":
                key_type, curve = pkcs11.KeyType.EC_EDWARDS, _ED25519_OID
                mechanism = pkcs11.Mechanism.EC_EDWARDS_KEY_PAIR_GEN
            else:
                key_type, curve = pkcs11.KeyType.EC, "secp256r1"
                mechanism = pkcs11.Mechanism.EC_KEY_PAIR_GEN
            parameters = session.create_domain_parameters(
                key_type,
                {attribute.EC_PARAMS: encode_named_curve_parameters(curve)},
                local=True,
            )
            parameters.generate_keypair(
                mechanism=mechanism,
                store=True,
                label=uri.object,
                id=key_id,
                public_template={attribute.VERIFY: True},
                private_template={
                    attribute.SIGN: True,
                    attribute.SENSITIVE: True,
                    attribute.EXTRACTABLE: False,
                    attribute.PRIVATE: True,
                },
            )
        except pkcs11.PKCS11Error as exc:
            raise PKIError(
                f"the token could not generate {uri.key_name} ({type(exc).__name__}): check it supports "
                f"{algorithm} and is writable"
            ) from exc
        finally:
            session.close()
    return Pkcs11Signer(uri)


class _TokenEcKey(ec.EllipticCurvePrivateKey):
    """``cryptography``'s ECDSA key interface over a token signer: only ECDSA with SHA-256 signs."""

    def __init__(self, signer: Pkcs11Signer) -> None:
        self._signer = signer

    def __repr__(self) -> str:
        return f"<token ECDSA key {self._signer.uri.key_name}>"

    def sign(
        self, data: crypto_utils.Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA) or not isinstance(
            signature_algorithm.algorithm, hashes.SHA256
        ):
            raise PKIError("a token CA key signs ECDSA with SHA-256 only")
        return self._signer.sign(bytes(data))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        public = self._signer.public_key
        assert isinstance(public, ec.EllipticCurvePublicKey)
        return public

    @property
    def curve(self) -> ec.EllipticCurve:
        return ec.SECP256R1()

    @property
    def key_size(self) -> int:
        return 256

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise PKIError("a token CA key only signs")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise PKIError(f"{self._signer.uri.key_name} cannot leave its token")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise PKIError(f"{self._signer.uri.key_name} cannot leave its token")

    def __copy__(self) -> _TokenEcKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _TokenEcKey:
        return self


class _TokenEd25519Key(Ed25519PrivateKey):
    """``cryptography``'s Ed25519 key interface over a token signer."""

    def __init__(self, signer: Pkcs11Signer) -> None:
        self._signer = signer

    def __repr__(self) -> str:
        return f"<token Ed25519 key {self._signer.uri.key_name}>"

    def sign(self, data: crypto_utils.Buffer) -> bytes:
        return self._signer.sign(bytes(data))

    def public_key(self) -> Ed25519PublicKey:
        public = self._signer.public_key
        assert isinstance(public, Ed25519PublicKey)
        return public

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise PKIError(f"{self._signer.uri.key_name} cannot leave its token")

    def private_bytes_raw(self) -> bytes:
        raise PKIError(f"{self._signer.uri.key_name} cannot leave its token")

    def __copy__(self) -> _TokenEd25519Key:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _TokenEd25519Key:
        return self


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError as exc:
        raise PKIError(
            "keys in a PKCS#11 token need the hsm extra: pip install 'secagg[hsm]'"
        ) from exc
    return pkcs11


def _module_path(uri: Pkcs11Uri) -> str:
    module = uri.module_path or os.environ.get(MODULE_ENV)
    if not module:
        raise PKIError(
            f"no PKCS#11 module for {uri.key_name}: set ${MODULE_ENV} to the token's library "
            "(e.g. /usr/lib/softhsm/libsofthsm2.so) or add module-path= to the URI"
        )
    if not Path(module).is_file():
        raise PKIError(
            f"the PKCS#11 module {module} does not exist: install the token's library or fix ${MODULE_ENV}"
        )
    return module


def _read_pin(uri: Pkcs11Uri) -> bytes:
    if uri.pin_source is not None:
        return read_owner_only_line(Path(uri.pin_source.removeprefix("file://")), what="PIN file")
    named = os.environ.get(PIN_ENV)
    if named:
        return read_owner_only_line(Path(named), what="PIN file")
    if not sys.stdin.isatty():
        raise PKIError(
            f"no PIN for token {uri.token or uri.serial!r}: set ${PIN_ENV} to a file (mode 0600) holding "
            "it, or run in a terminal to be prompted"
        )
    return getpass.getpass(f"user PIN of token {uri.token or uri.serial!r}: ").encode("utf-8")


def _token(pkcs11: Any, module: str, uri: Pkcs11Uri) -> Any:
    try:
        library = pkcs11.lib(module)
    except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
        raise PKIError(
            f"the PKCS#11 module {module} does not load ({type(exc).__name__}): is it a PKCS#11 library?"
        ) from exc
    selector: dict[str, Any] = {}
    if uri.token is not None:
        selector["token_label"] = uri.token
    if uri.serial is not None:
        selector["token_serial"] = uri.serial.encode("utf-8")
    try:
        return library.get_token(**selector)
    except pkcs11.NoSuchToken as exc:
        raise PKIError(
            f"no token {uri.token or uri.serial!r} in {module}: check the token label (softhsm2-util "
            "--show-slots lists SoftHSM's) and that the token is present"
        ) from exc
    except pkcs11.MultipleTokensReturned as exc:
        raise PKIError(f"several tokens match {uri.token!r}: add serial= to the URI") from exc


def _match(pkcs11: Any, uri: Pkcs11Uri, object_class: Any) -> dict[Any, Any]:
    match: dict[Any, Any] = {pkcs11.Attribute.CLASS: object_class}
    if uri.object is not None:
        match[pkcs11.Attribute.LABEL] = uri.object
    if uri.id is not None:
        match[pkcs11.Attribute.ID] = uri.id
    return match


def _find_key(pkcs11: Any, session: Any, uri: Pkcs11Uri) -> Any:
    found = list(session.get_objects(_match(pkcs11, uri, pkcs11.ObjectClass.PRIVATE_KEY)))
    if not found:
        raise PKIError(
            f"no private {uri.key_name}: check object= (the key's label) or create the key with "
            "the command's --*-key option"
        )
    if len(found) > 1:
        raise PKIError(f"several private keys match {uri.key_name}: add id= to the URI")
    return found[0]


def _describe(
    session: Any, attribute: Any, private: Any, uri: Pkcs11Uri
) -> tuple[Algorithm, ec.EllipticCurvePublicKey | Ed25519PublicKey]:
    """The algorithm and public key of ``private``, from the public key object with the same id."""
    import pkcs11
    from asn1crypto import core as asn1_core
    from asn1crypto import keys as asn1_keys

    match = {attribute.CLASS: pkcs11.ObjectClass.PUBLIC_KEY, attribute.ID: private[attribute.ID]}
    publics = list(session.get_objects(match))
    if len(publics) != 1:
        raise PKIError(
            f"{uri.key_name} has no single public key object with its CKA_ID: import or generate the pair"
        )
    try:
        curve = asn1_keys.ECDomainParameters.load(bytes(publics[0][attribute.EC_PARAMS]))
        point = bytes(publics[0][attribute.EC_POINT])
        # CKA_EC_POINT is a DER OCTET STRING (PKCS#11 3.0 section 2.3.3); some tokens give the raw point.
        if len(point) >= 2 and point[0] == 0x04 and point[1] == len(point) - 2:
            point = asn1_core.OctetString.load(point).native
        oid = curve.chosen.dotted if curve.name == "named" else ""
        if oid == _P256_OID:
            return "ecdsa-p256", ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        if oid == _ED25519_OID or curve.native in ("edwards25519", "1.3.101.112"):
            return "ed25519", Ed25519PublicKey.from_public_bytes(point)
    except (pkcs11.PKCS11Error, ValueError, TypeError) as exc:
        raise PKIError(
            f"{uri.key_name}: its public key does not parse ({type(exc).__name__})"
        ) from exc
    raise PKIError(f"{uri.key_name} is neither ECDSA P-256 nor Ed25519: generate a supported key")


def _check_algorithm(signer: Signer, algorithm: Algorithm, name: str) -> None:
    if signer.algorithm != algorithm:
        raise PKIError(
            f"{name} is an {signer.algorithm} key, but an {algorithm} key is needed here"
        )
