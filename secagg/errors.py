"""The exception tree of ``secagg``: every failure the cryptography and protocol raise.

::

    SecAggError
    ├── InvalidParameters       a configuration that is unsafe or inconsistent (threshold, bits, n)
    ├── InvalidSignature        an Ed25519 signature (roster, advertisement, survivor set) does not verify
    ├── DecryptionError         an AEAD ciphertext does not open (opaque on purpose, like Fernet's InvalidToken)
    ├── ProtocolError           a message is out of order, from the wrong session, or malformed
    │   └── ProtocolViolation   evidence that the server (or a peer) is lying: refuse and stop
    │       ├── InvalidProof    a zero-knowledge proof (Paillier partial decryption) does not verify
    │       └── InvalidMerkleProof  an RFC 6962 inclusion or consistency proof does not verify
    └── RoundAborted            too few participants remain to finish the round safely

Notes:
    Verification failures raise and never return ``False`` (pyca/cryptography's rule), so a
    forgotten check cannot silently pass. ``DecryptionError`` folds every cause into one
    message so a caller learns nothing about why a ciphertext failed to open.
"""

from __future__ import annotations

__all__ = [
    "DecryptionError",
    "InvalidMerkleProof",
    "InvalidParameters",
    "InvalidProof",
    "InvalidSignature",
    "ProtocolError",
    "ProtocolViolation",
    "RoundAborted",
    "SecAggError",
]


class SecAggError(Exception):
    """Root of every error raised by ``secagg``."""


class InvalidParameters(SecAggError):
    """A configuration that is unsafe or inconsistent."""


class InvalidSignature(SecAggError):
    """A signature does not verify against the expected key."""


class DecryptionError(SecAggError):
    """A ciphertext does not decrypt. The cause is deliberately not disclosed."""


class ProtocolError(SecAggError):
    """A message arrived in the wrong stage, for the wrong session, or malformed."""


class ProtocolViolation(ProtocolError):
    """Evidence of an actively malicious server or peer; the honest party stops."""


class RoundAborted(SecAggError):
    """Too few participants remain to finish the round without weakening privacy."""


class InvalidProof(ProtocolViolation):
    """A zero-knowledge proof (e.g. of a correct Paillier partial decryption) does not verify."""


class InvalidMerkleProof(ProtocolViolation):
    """An RFC 6962 Merkle inclusion or consistency proof does not verify against the expected root."""
