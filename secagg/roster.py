"""The signed roster: which silos belong to a federation and the Ed25519 key each one signs with.

Notes:
    The roster is signed by the consortium key and distributed out of band; every silo pins it. It is what
    lets silos verify each other's per-round keys through an untrusted coordinator (DESIGN section 2), and it
    fixes each silo's index (its Shamir x-coordinate and its place in the mask sign order) so the coordinator
    cannot add members or reorder them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.errors import InvalidParameters, InvalidSignature
from secagg.hazmat.keys import encode_fields, public_bytes, sign, verify

__all__ = ["SILO_ID_PATTERN", "Roster"]

SILO_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_FORMAT = 1


@dataclass(frozen=True)
class Roster:
    """A consortium-signed map of silo id -> Ed25519 public key. Construct with :meth:`create` or :meth:`loads`."""

    federation: str
    members: Mapping[str, bytes]
    consortium_key: bytes
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.federation:
            raise InvalidParameters("roster federation must not be empty")
        if not self.members:
            raise InvalidParameters("roster has no members")
        for silo, key in self.members.items():
            if not SILO_ID_PATTERN.fullmatch(silo):
                raise InvalidParameters(
                    f"invalid silo id {silo!r}: use lowercase letters, digits, . _ -"
                )
            if len(key) != 32:
                raise InvalidParameters(f"public key of {silo} is not 32 bytes")
        if len(set(self.members.values())) != len(self.members):
            raise InvalidParameters("two roster members share a public key")
        object.__setattr__(self, "members", MappingProxyType(dict(sorted(self.members.items()))))

    @classmethod
    def create(
        cls, *, federation: str, members: Mapping[str, bytes], consortium_key: Ed25519PrivateKey
    ) -> Roster:
        """Build and sign a roster with the consortium's private key."""
        unsigned = cls(federation, members, public_bytes(consortium_key), b"")
        return cls(
            federation, members, unsigned.consortium_key, sign(consortium_key, unsigned.payload())
        )

    def payload(self) -> bytes:
        """The exact bytes the consortium signs."""
        return self._payload

    @cached_property
    def _payload(self) -> bytes:
        # once per roster (it is immutable): every long poll announces the fingerprint, and at 100 silos
        # re-encoding 200 fields each time was a large part of the coordinator's CPU
        fields: list[bytes | str | int] = ["roster", _FORMAT, self.federation, self.consortium_key]
        for silo, key in self.members.items():
            fields += [silo, key]
        return encode_fields(*fields)

    def verify(self, pinned_consortium_key: bytes) -> None:
        """Check the consortium signature against the key the caller pinned.

        Raises:
            InvalidSignature: wrong consortium key, or the signature does not verify.
        """
        if self.consortium_key != pinned_consortium_key:
            raise InvalidSignature(
                "roster is signed by a different consortium key than the pinned one"
            )
        verify(self.consortium_key, self.signature, self.payload())

    def index(self, silo: str) -> int:
        """The silo's 1-based index (its Shamir x-coordinate and mask-order position).

        Raises:
            KeyError: the silo is not a member.
        """
        if silo not in self.members:
            raise KeyError(silo)
        return list(self.members).index(silo) + 1

    def key(self, silo: str) -> bytes:
        """The silo's Ed25519 public key, or ``KeyError``."""
        return self.members[silo]

    def fingerprint(self) -> str:
        """SHA-256 hex of the signed payload: what the ledger records."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        return hashlib.sha256(self.payload()).hexdigest()

    def dumps(self) -> str:
        """Serialize to JSON (keys and signature as hex)."""
        return json.dumps(
            {
                "format": _FORMAT,
                "federation": self.federation,
                "consortium_key": self.consortium_key.hex(),
                "members": {silo: key.hex() for silo, key in self.members.items()},
                "signature": self.signature.hex(),
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def loads(cls, text: str | bytes) -> Roster:
        """Parse a roster; call :meth:`verify` with the pinned key before trusting it.

        Raises:
            InvalidParameters: malformed JSON or fields.
        """
        try:
            data = json.loads(text)
            if data["format"] != _FORMAT:
                raise InvalidParameters(f"unsupported roster format {data['format']!r}")
            return cls(
                str(data["federation"]),
                {str(k): bytes.fromhex(v) for k, v in data["members"].items()},
                bytes.fromhex(data["consortium_key"]),
                bytes.fromhex(data["signature"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidParameters(f"malformed roster: {exc}") from exc
