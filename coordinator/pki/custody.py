"""Key custody: every private key file is mode 0600 and encrypted at rest under a passphrase.

The passphrase comes from the file named by ``SECAGG_PASSPHRASE_FILE`` (itself owner-only), or from an
interactive prompt on the terminal; never from a command-line argument, which other users can read in
``/proc/<pid>/cmdline`` and which shells keep in their history.

Notes:
    - Keys are PKCS#8 ``EncryptedPrivateKeyInfo`` (RFC 5958 section 3) under PBES2 (RFC 8018 section 6.2):
      PBKDF2-HMAC-SHA256 with :data:`PBKDF2_ITERATIONS` = 600,000 iterations and a 16-byte random salt, then
      AES-256-CBC, which OpenSSL, gRPC's BoringSSL and HSM import tools read. 600,000 is OWASP's 2023 figure
      for PBKDF2-HMAC-SHA256 (Password Storage Cheat Sheet). ``cryptography`` 50's
      ``BestAvailableEncryption`` writes the same scheme with only 2,048 iterations, and its
      ``encryption_builder()`` tunes the KDF only for OpenSSH and PKCS#12, so the structure is assembled here
      with ``asn1crypto`` around ``cryptography``'s PBKDF2 and AES. Files written with 2,048 iterations by
      earlier versions still load (the iteration count is read from the file). The passphrase still carries
      most of the strength: the development consortium generates a 256-bit random one; an operator should
      use a long passphrase (NIST SP 800-63B section 5.1.1.2).
    - A key readable by the group or other users is refused before it is read, as OpenSSH refuses a private
      key with permissions wider than 0600 (``sshd(8)``, "Permissions ... are too open"): a key that others
      could have copied cannot be trusted to be secret, even if it is encrypted.
    - An unencrypted key is refused too, so a key written by an old tool or by hand cannot silently weaken
      custody; the message says how to encrypt it.
    - gRPC's TLS stack takes the private key only as unencrypted PEM bytes, so :func:`tls_key_pem` decrypts
      in memory and hands over bytes that never touch the disk.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from pathlib import Path

from asn1crypto import algos as asn1_algos
from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from coordinator.errors import PKIError

__all__ = [
    "PASSPHRASE_ENV",
    "PBKDF2_ITERATIONS",
    "encrypt_private_key",
    "load_encrypted_private_key",
    "read_owner_only_line",
    "read_passphrase",
    "tls_key_pem",
    "write_new_file",
    "write_private_key",
]

PASSPHRASE_ENV = "SECAGG_PASSPHRASE_FILE"  # noqa: S105 - the name of a variable, not a secret
"""Environment variable naming the file that holds the key passphrase (first line, mode 0600)."""

PBKDF2_ITERATIONS = 600_000
"""PBKDF2-HMAC-SHA256 iterations for a new key file (OWASP Password Storage Cheat Sheet, 2023)."""

_SALT_BYTES = (
    16  # RFC 8018 section 4.1: at least 64 bits; NIST SP 800-132 section 5.1: at least 128 bits
)
_MIN_PASSPHRASE = 8
_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644
_TOO_OPEN = 0o077


def read_passphrase(*, confirm: bool = False, purpose: str = "the private keys") -> bytes:
    """The key passphrase: from ``$SECAGG_PASSPHRASE_FILE`` if set, else an interactive prompt.

    Args:
        confirm: ask twice when prompting (used when new keys are written).
        purpose: what the passphrase protects, shown in the prompt.

    Raises:
        PKIError: the file is missing, readable by others, or empty; no terminal to prompt on; the two typed
            passphrases differ or are too short.
    """
    named = os.environ.get(PASSPHRASE_ENV)
    if named:
        return read_owner_only_line(Path(named), what="passphrase file")
    if not sys.stdin.isatty():
        raise PKIError(
            f"no passphrase for {purpose}: set {PASSPHRASE_ENV} to a file (mode 0600) holding it, "
            "or run in a terminal to be prompted"
        )
    typed = getpass.getpass(f"passphrase for {purpose}: ")
    if confirm:
        if len(typed) < _MIN_PASSPHRASE:
            raise PKIError(f"the passphrase must have at least {_MIN_PASSPHRASE} characters")
        if getpass.getpass("repeat the passphrase: ") != typed:
            raise PKIError("the two passphrases differ: run the command again")
    return typed.encode("utf-8")


def read_owner_only_line(path: Path, *, what: str) -> bytes:
    """The first line of a secret file (a passphrase or a token PIN) that only its owner can read.

    Raises:
        PKIError: missing, readable by others, unreadable, or an empty first line.
    """
    _check_owner_only(path, what=what)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise PKIError(f"cannot read {what} {path}: {exc.strerror}") from exc
    secret = lines[0] if lines else b""
    if not secret:
        noun = what.removesuffix(" file")
        raise PKIError(f"{what} {path} is empty: write the {noun} on its first line")
    return secret


def encrypt_private_key(
    key: PrivateKeyTypes, passphrase: bytes, *, iterations: int = PBKDF2_ITERATIONS
) -> bytes:
    """``key`` as encrypted PKCS#8 PEM (``BEGIN ENCRYPTED PRIVATE KEY``): PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC.

    Args:
        key: the private key.
        passphrase: what the key-encryption key is derived from.
        iterations: PBKDF2 iterations; at least :data:`PBKDF2_ITERATIONS` (a lower count is refused).

    Raises:
        ValueError: an empty passphrase, or fewer iterations than :data:`PBKDF2_ITERATIONS`.

    Notes:
        RFC 8018 section 6.2.1 (PBES2 encryption), with the AES-256-CBC scheme of RFC 8018 appendix B.2.5
        and PKCS#7 padding (RFC 5652 section 6.3); salt and IV come from the OS CSPRNG.
    """
    if not passphrase:
        raise ValueError("an empty passphrase does not encrypt anything")
    if iterations < PBKDF2_ITERATIONS:
        raise ValueError(f"iterations must be at least {PBKDF2_ITERATIONS}")
    plain = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt = os.urandom(_SALT_BYTES)
    iv = os.urandom(algorithms.AES.block_size // 8)
    kek = PBKDF2HMAC(hashes.SHA256(), 32, salt, iterations).derive(passphrase)
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    encryptor = Cipher(algorithms.AES(kek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    info = asn1_keys.EncryptedPrivateKeyInfo(
        {
            "encryption_algorithm": {
                "algorithm": "pbes2",
                "parameters": {
                    "key_derivation_func": {
                        "algorithm": "pbkdf2",
                        "parameters": {
                            "salt": asn1_algos.Pbkdf2Salt(name="specified", value=salt),
                            "iteration_count": iterations,
                            "prf": {"algorithm": "sha256"},
                        },
                    },
                    "encryption_scheme": {"algorithm": "aes256_cbc", "parameters": iv},
                },
            },
            "encrypted_data": ciphertext,
        }
    )
    armored: bytes = asn1_pem.armor("ENCRYPTED PRIVATE KEY", info.dump())
    return armored


def write_private_key(path: Path, key: PrivateKeyTypes, passphrase: bytes) -> None:
    """Create ``path`` (never replacing a file) with ``key`` encrypted under ``passphrase``, mode 0600.

    Raises:
        FileExistsError: ``path`` exists.
    """
    write_new_file(path, encrypt_private_key(key, passphrase), private=True)


def load_encrypted_private_key(
    path: str | os.PathLike[str], passphrase: bytes | None = None
) -> PrivateKeyTypes:
    """Load an encrypted PEM private key after checking that only its owner can read it.

    Args:
        path: the key file.
        passphrase: the passphrase; :func:`read_passphrase` when ``None``.

    Raises:
        PKIError: missing or unreadable; readable by group or others; not encrypted; wrong passphrase; not a
            private key. Each message is one line naming the file and what to do, never its content.
    """
    path = Path(path)
    _check_owner_only(path, what="private key")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PKIError(f"cannot read private key {path}: {exc.strerror}") from exc
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" not in data:
        if b"PRIVATE KEY-----" in data:
            raise PKIError(
                f"{path} is not encrypted: keys must be encrypted at rest; encrypt it with "
                f"`openssl pkcs8 -topk8 -v2 aes-256-cbc -in {path} -out {path}.enc` and use that file"
            )
        raise PKIError(f"{path} is not a PEM private key")
    secret = read_passphrase() if passphrase is None else passphrase
    try:
        return serialization.load_pem_private_key(data, password=secret)
    except ValueError as exc:
        raise PKIError(
            f"wrong passphrase for {path}: check the file {PASSPHRASE_ENV} names "
            "(or the passphrase you typed) is the one this key was written with"
        ) from exc
    except (
        TypeError
    ) as exc:  # the parser's message can quote the input; it never reaches the caller
        raise PKIError(f"{path} is not an encrypted PEM private key") from exc


def tls_key_pem(path: str | os.PathLike[str], passphrase: bytes | None = None) -> bytes:
    """The TLS private key at ``path``, decrypted into unencrypted PKCS#8 PEM bytes in memory, for gRPC.

    Raises:
        PKIError: as :func:`load_encrypted_private_key`.
    """
    key = load_encrypted_private_key(path, passphrase)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_new_file(path: Path, data: bytes, *, private: bool) -> None:
    """Create ``path`` exclusively (never replace a file) with mode 0600 for keys, 0644 otherwise, fsynced.

    Raises:
        FileExistsError: ``path`` exists (an existing key is never replaced).
    """
    mode = _PRIVATE_MODE if private else _PUBLIC_MODE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        # The umask may have removed bits from ``mode``; set it exactly (a key is never wider than 0600).
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_owner_only(path: Path, *, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise PKIError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(mode):
        raise PKIError(f"{what} {path} is not a regular file")
    if mode & _TOO_OPEN:
        raise PKIError(
            f"{what} {path} is readable by other users (mode {stat.S_IMODE(mode):04o}): "
            f"run `chmod 600 {path}`, and replace the key if others may have copied it"
        )
