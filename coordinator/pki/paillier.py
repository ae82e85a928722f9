"""The Paillier-mode key ceremony on a consortium directory (``secagg pki paillier DIR --threshold t``).

Files, next to the consortium's other keys (see :class:`PaillierFiles`)::

    paillier.pub.json                   joint public key (coordinator and every silo; 0644)
    paillier.pub.sig                    the consortium key's Ed25519 signature over its fingerprint (hex; 0644)
    silos/<id>/paillier-x25519.key      the silo's X25519 key the share is sealed to (PEM PKCS#8, 0600)
    silos/<id>/paillier-share.json      the silo's share, sealed to that key (0600)

Notes:
    Trusted dealer (DESIGN 5): :func:`secagg.paillier.run_key_ceremony` sees every share while it runs, so the
    ceremony must run on a machine the consortium trusts, as the development CA does; it seals each share to its
    silo (X25519 + HKDF + AES-GCM bound to the federation and key fingerprint) before anything touches the disk,
    and the coordinator only ever gets ``paillier.pub.json``. In production each silo generates its own X25519
    key and hands only the public half to the dealer (``recipients=``); the development layout generates them
    here, like the rest of the development consortium. Files are created exclusively: an existing key is never
    replaced (a second ceremony would orphan every share).

    The consortium key (the one that signs the roster) signs the joint key's fingerprint for the federation,
    and a silo loads the key only if that signature verifies under its pinned consortium key: whoever can
    place a file next to the roster cannot substitute a key whose shares they dealt themselves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from coordinator.errors import PKIError
from coordinator.pki import ConsortiumPaths, load_ed25519_private, write_new_file
from coordinator.pki.custody import encrypt_private_key, load_encrypted_private_key, read_passphrase
from secagg.errors import InvalidParameters, InvalidSignature, SecAggError
from secagg.hazmat.keys import RandomSource, encode_fields, new_x25519, public_bytes, sign, verify
from secagg.hazmat.paillier import (
    DEFAULT_KEY_BITS,
    SUPPORTED_KEY_BITS,
    KeyShare,
    SealedShare,
    ThresholdPublicKey,
    check_key_share,
)
from secagg.paillier import (
    DEFAULT_COLLUSION,
    DEFAULT_MIN_COHORT,
    check_trust_parameters,
    open_key_share,
    run_key_ceremony,
)

if TYPE_CHECKING:  # config and pki are peers (DESIGN 3): a type only, no import at run time
    from coordinator.config import SiloConfig

__all__ = ["PaillierFiles", "create_paillier_keys", "key_statement", "load_signed_public_key"]


def key_statement(federation: str, public_key: ThresholdPublicKey) -> bytes:
    """What the consortium key signs for a joint Paillier key: the federation and the key's fingerprint."""
    return encode_fields("secagg/paillier-public-key/v1", federation, public_key.fingerprint())


def load_signed_public_key(
    path: Path, signature: Path | None = None, *, federation: str, consortium_key: bytes
) -> ThresholdPublicKey:
    """Read a joint public key and check the consortium's signature on it (``signature`` defaults to the
    file next to it, ``paillier.pub.sig`` for ``paillier.pub.json``).

    Raises:
        PKIError: a file is missing or malformed, or the key is not signed by ``consortium_key`` for
            ``federation``.
    """
    signature = path.with_suffix(".sig") if signature is None else signature
    try:
        public_key = ThresholdPublicKey.from_json(path.read_bytes())
        signed = bytes.fromhex(signature.read_text(encoding="utf-8").strip())
    except (OSError, ValueError, SecAggError) as exc:
        raise PKIError(f"cannot load the Paillier public key: {type(exc).__name__}") from exc
    try:
        verify(consortium_key, signed, key_statement(federation, public_key))
    except InvalidSignature as exc:
        raise PKIError(
            f"{path} is not signed by the pinned consortium key for federation {federation!r}; do not "
            "use it, and ask the consortium for the key its ceremony made"
        ) from exc
    return public_key


def _write(path: Path, data: bytes, *, private: bool) -> None:
    try:
        write_new_file(path, data, private=private)
    except FileExistsError as exc:
        raise PKIError(f"{path} already exists; refusing to replace Paillier key material") from exc


def create_paillier_keys(
    consortium: ConsortiumPaths,
    *,
    threshold: int,
    collusion: int = DEFAULT_COLLUSION,
    min_cohort: int = DEFAULT_MIN_COHORT,
    key_bits: int = DEFAULT_KEY_BITS,
    recipients: Mapping[str, bytes] | None = None,
    rng: RandomSource = os.urandom,
    insecure_test_key_size: bool = False,
    passphrase: bytes | None = None,
) -> Path:
    """Deal a t-of-n threshold Paillier key to the consortium's silos and write it into its directory.

    Args:
        consortium: the consortium (from :func:`coordinator.pki.create_consortium` or ``ConsortiumPaths.load``).
        threshold: ``t``, partial decryptions needed (2 <= t <= number of silos, ``t > collusion``).
        collusion: ``c``, silos assumed to collude with the coordinator (``[rounds] collusion``; default 0).
        min_cohort: fewest contributions in a decrypted aggregate (``[rounds] min_cohort``; default 3);
            ``min_cohort - c >= 2``.
        key_bits: 2048 (default) or 3072.
        recipients: silo id -> the silo's own X25519 public key (32 bytes). When omitted, an X25519 key is
            generated for every silo and written to its directory (development consortiums).
        rng: randomness for the dealer and the X25519 keys.
        insecure_test_key_size: allow small keys (tests only).
        passphrase: opens the consortium key and encrypts the X25519 keys it makes; defaults to
            :func:`coordinator.pki.read_passphrase`.

    Returns:
        The path of the joint public key file (what the coordinator loads).

    Raises:
        PKIError: unsafe parameters (a threshold ``c`` colluders reach, a cohort with fewer than two honest
            contributions), a file that already exists, or recipients that do not match the roster.
    """
    silos = list(consortium.silos)
    if not insecure_test_key_size and key_bits not in SUPPORTED_KEY_BITS:
        raise PKIError(f"key_bits must be one of {SUPPORTED_KEY_BITS}")
    if not 2 <= threshold <= len(silos):
        raise PKIError(f"threshold must satisfy 2 <= t <= {len(silos)}")
    try:  # before anything is generated or written
        check_trust_parameters(
            threshold=threshold, collusion=collusion, min_cohort=min_cohort, parties=len(silos)
        )
    except InvalidParameters as exc:
        raise PKIError(f"Paillier key ceremony refused: {exc}") from exc
    files = {silo: PaillierFiles.for_silo(consortium.root, silo) for silo in silos}
    public_path = files[silos[0]].public_key
    existing = [
        p for f in files.values() for p in (f.share, f.public_key, f.signature) if p.exists()
    ]
    if existing:
        raise PKIError(f"{existing[0]} already exists; refusing to replace Paillier key material")
    private_keys: dict[str, X25519PrivateKey] = {}
    if recipients is None:
        private_keys = {silo: new_x25519(rng) for silo in silos}
        recipients = {silo: public_bytes(key) for silo, key in private_keys.items()}
    if set(recipients) != set(silos) or any(len(k) != 32 for k in recipients.values()):
        raise PKIError("recipients must give one 32-byte X25519 public key per roster silo")
    signer = load_ed25519_private(consortium.consortium_key, passphrase)
    try:
        result = run_key_ceremony(
            federation_id=consortium.federation,
            threshold=threshold,
            recipients=recipients,
            collusion=collusion,
            min_cohort=min_cohort,
            key_bits=key_bits,
            rng=rng,
            insecure_test_key_size=insecure_test_key_size,
        )
    except InvalidParameters as exc:
        raise PKIError(f"Paillier key ceremony refused: {exc}") from exc
    if private_keys:  # encrypted at rest like every other key (coordinator.pki.custody)
        secret = read_passphrase() if passphrase is None else passphrase
    for silo, key in private_keys.items():
        _write(files[silo].x25519_key, encrypt_private_key(key, secret), private=True)
    for silo in silos:
        sealed = result.sealed_shares[silo].to_json().encode("utf-8")
        _write(files[silo].share, sealed, private=True)
    signature = sign(signer, key_statement(consortium.federation, result.public_key))
    _write(files[silos[0]].signature, (signature.hex() + "\n").encode(), private=False)
    _write(public_path, result.public_key.to_bytes(), private=False)
    return public_path


@dataclass(frozen=True)
class PaillierFiles:
    """Where Paillier-mode key material lives in a consortium directory (written by ``create_paillier_keys``).

    Attributes:
        public_key: the joint public key (JSON), for the coordinator and every silo.
        signature: the consortium key's signature over it (:func:`key_statement`, hex).
        share: ``silos/<id>/paillier-share.json``: the silo's key share sealed to its X25519 key.
        x25519_key: ``silos/<id>/paillier-x25519.key``: the silo's X25519 private key (PEM, mode 0600).
    """

    public_key: Path
    share: Path
    x25519_key: Path
    signature: Path

    @classmethod
    def for_silo(cls, root: Path, silo: str) -> PaillierFiles:
        """The standard layout under consortium directory ``root``."""
        directory = root / "silos" / silo
        return cls(
            public_key=root / "paillier.pub.json",
            share=directory / "paillier-share.json",
            x25519_key=directory / "paillier-x25519.key",
            signature=root / "paillier.pub.sig",
        )

    @classmethod
    def from_silo_config(cls, config: SiloConfig) -> PaillierFiles:
        """Derived from a silo configuration: the roster sits at the consortium root, the signing key in the
        silo's own directory (the layout ``create_consortium`` writes)."""
        directory = config.signing_key.parent
        return cls(
            public_key=config.roster.parent / "paillier.pub.json",
            share=directory / "paillier-share.json",
            x25519_key=directory / "paillier-x25519.key",
            signature=config.roster.parent / "paillier.pub.sig",
        )

    def load(
        self, *, federation: str, consortium_key: bytes
    ) -> tuple[ThresholdPublicKey, KeyShare]:
        """Read the public key, check the consortium's signature on it, and open this silo's sealed share.

        Args:
            federation: the federation id the key was dealt for.
            consortium_key: the pinned consortium public key (32 bytes; the one the roster verifies under).

        Raises:
            PKIError: a file is missing or malformed, the key is not signed by the consortium for this
                federation, the share does not open with this silo's key, or it does not match its
                verification key in the public key.
        """
        public_key = load_signed_public_key(
            self.public_key, self.signature, federation=federation, consortium_key=consortium_key
        )
        try:
            sealed = SealedShare.from_json(self.share.read_bytes())
            private = load_encrypted_private_key(self.x25519_key)
        except (OSError, ValueError, SecAggError) as exc:
            raise PKIError(f"cannot load the Paillier key material: {type(exc).__name__}") from exc
        if not isinstance(private, X25519PrivateKey):
            raise PKIError(f"{self.x25519_key} is not an X25519 private key")
        try:
            share = open_key_share(sealed, private, federation_id=federation, public_key=public_key)
        except SecAggError as exc:
            raise PKIError(
                "the sealed Paillier key share does not open with this silo's key"
            ) from exc
        try:
            check_key_share(public_key, share)
        except InvalidParameters as exc:
            raise PKIError("the Paillier key share does not match its verification key") from exc
        return public_key, share
