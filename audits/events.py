"""The audit event schema (version 1) and the ledger entry envelope that is hashed.

An :class:`Event` is what the coordinator reports; a :class:`LedgerEntry` is an event placed
at an index of the ledger together with the leaf hash of the entry before it. The entry's
canonical JSON (RFC 8785) is the Merkle leaf.

Notes:
    Each entry carries its own ``index`` and ``prev`` (the RFC 6962 leaf hash of the previous
    entry; the empty-tree hash for entry 0). The Merkle root over all entries already detects
    any edit, deletion, insertion or reordering (RFC 9162 2.1); the chain lets a verifier also
    *name* the first entry that was touched, which a bare root cannot do.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from audits.canonical import canonical_json, parse_canonical
from audits.errors import LedgerError

__all__ = [
    "ROUND_KINDS",
    "SCHEMA_VERSION",
    "Event",
    "EventKind",
    "LedgerEntry",
    "SchemaError",
    "utc_now",
    "validate_body",
]

#: Version of the event schema written into every entry.
SCHEMA_VERSION: Final = 1

JSON: TypeAlias = Any  # a JSON value: Mapping / tuple / list / str / int / float / bool / None


class SchemaError(LedgerError):
    """An event or entry does not follow the schema; the message names the field."""


class EventKind(StrEnum):
    """Every kind of fact the ledger records."""

    FEDERATION_CREATED = "federation_created"
    ROUND_OPENED = "round_opened"
    ROUND_CLOSED = "round_closed"
    ROUND_ABORTED = "round_aborted"
    PARTICIPANTS = "participants"
    KEY_FINGERPRINTS = "key_fingerprints"
    GLOBAL_MODEL = "global_model"
    PRIVACY_ATTESTATION = "privacy_attestation"
    BUDGET_REFUSAL = "budget_refusal"
    ACCOUNTANT_FALLBACK = "accountant_fallback"
    VERIFICATION_FAILURE = "verification_failure"
    INCIDENT = "incident"
    CHECKPOINT = "checkpoint"
    ROSTER_CHANGED = "roster_changed"


_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
# One character class and a length check (in _hex), not a repeated pair group: ~8x faster on
# the ~1 KB signing payloads the verifier checks 100,000 times.
_HEX_RE = re.compile(r"[0-9a-f]*\Z")
_HASH_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_ED25519_SIG_HEX_RE = re.compile(r"^[0-9a-f]{128}$")


def utc_now() -> str:
    """The current time as RFC 3339 UTC text with microseconds, e.g. ``2025-01-02T03:04:05.000006Z``."""
    now = _dt.datetime.now(_dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------- field checks


def _fail(kind: str, path: str, problem: str) -> SchemaError:
    return SchemaError(f"{kind}: body.{path} {problem}")


def _get(kind: str, body: Mapping[str, JSON], name: str) -> JSON:
    if name not in body:
        raise _fail(kind, name, "is required")
    return body[name]


def _str(kind: str, path: str, value: JSON, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise _fail(kind, path, "must be a non-empty string")
    return value


def _int(kind: str, path: str, value: JSON, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(kind, path, f"must be an integer >= {minimum}")
    return value


def _num(kind: str, path: str, value: JSON) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(kind, path, "must be a finite number")
    if value < 0:
        raise _fail(kind, path, "must be >= 0")
    return float(value)


def _obj(kind: str, path: str, value: JSON) -> Mapping[str, JSON]:
    if not isinstance(value, Mapping):
        raise _fail(kind, path, "must be an object")
    return value


def _hex(kind: str, path: str, value: JSON, pattern: re.Pattern[str] = _HEX_RE) -> str:
    if not isinstance(value, str) or not value or len(value) % 2 or not pattern.match(value):
        raise _fail(kind, path, "must be lowercase hex of the right length")
    return value


def _ids(kind: str, path: str, value: JSON) -> list[str]:
    if not isinstance(value, list | tuple):
        raise _fail(kind, path, "must be a list of silo ids")
    ids = [_str(kind, f"{path}[{i}]", v) for i, v in enumerate(value)]
    if len(set(ids)) != len(ids):
        raise _fail(kind, path, "repeats a silo id")
    return ids


def _opt_str(kind: str, body: Mapping[str, JSON], name: str) -> None:
    if name in body and body[name] is not None:
        _str(kind, name, body[name])


# ------------------------------------------------------------------------- per-kind checks


def _federation_created(k: str, b: Mapping[str, JSON]) -> None:
    _obj(k, "config", _get(k, b, "config"))
    _hex(k, "roster_fingerprint", _get(k, b, "roster_fingerprint"), _HASH_HEX_RE)
    tm = _obj(k, "threat_model", _get(k, b, "threat_model"))
    n = _int(k, "threat_model.n", _get(k, tm, "n"), minimum=1)
    t = _int(k, "threat_model.t", _get(k, tm, "t"), minimum=1)
    c = _int(k, "threat_model.c", _get(k, tm, "c"))
    mc = _int(k, "threat_model.min_cohort", _get(k, tm, "min_cohort"), minimum=1)
    _str(k, "threat_model.mode", _get(k, tm, "mode"))
    if t > n or c >= n or mc > n:
        raise _fail(k, "threat_model", "needs t <= n, c < n and min_cohort <= n")
    if "governance" in b:
        g = _obj(k, "governance", b["governance"])
        if not isinstance(g.get("governors"), list | tuple) or not g["governors"]:
            raise _fail(k, "governance.governors", "must be a non-empty list of keys")
        for i, key in enumerate(g["governors"]):
            _hex(k, f"governance.governors[{i}]", key, _HASH_HEX_RE)
        _int(k, "governance.quorum", _get(k, g, "quorum"), minimum=1)
        _str(k, "governance.roster_version", _get(k, g, "roster_version"))
    if "privacy" in b:
        p = _obj(k, "privacy", b["privacy"])
        _opt_str(k, p, "unit_of_privacy")
        for name in ("budget",):
            if name in p:
                _budget(k, f"privacy.{name}", p[name])
        if "silo_budgets" in p:
            for silo, budget in _obj(k, "privacy.silo_budgets", p["silo_budgets"]).items():
                _budget(k, f"privacy.silo_budgets.{silo}", budget)


def _budget(k: str, path: str, value: JSON) -> None:
    budget = _obj(k, path, value)
    _num(k, f"{path}.epsilon", _get(k, budget, "epsilon"))
    delta = _num(k, f"{path}.delta", _get(k, budget, "delta"))
    if delta >= 1:
        raise _fail(k, f"{path}.delta", "must be < 1")


def _round_opened(k: str, b: Mapping[str, JSON]) -> None:
    _hex(k, "model_hash", _get(k, b, "model_hash"), _HASH_HEX_RE)


def _round_closed(k: str, b: Mapping[str, JSON]) -> None:
    if "global_model_hash" in b:
        _hex(k, "global_model_hash", b["global_model_hash"], _HASH_HEX_RE)


def _round_aborted(k: str, b: Mapping[str, JSON]) -> None:
    _str(k, "reason", _get(k, b, "reason"))
    _opt_str(k, b, "stage")


def _participants(k: str, b: Mapping[str, JSON]) -> None:
    survivors = _ids(k, "survivors", _get(k, b, "survivors"))
    dropped = _ids(k, "dropped", _get(k, b, "dropped"))
    if set(survivors) & set(dropped):
        raise _fail(k, "dropped", "overlaps survivors: a silo cannot both survive and drop")
    _opt_str(k, b, "stage")


def _key_fingerprints(k: str, b: Mapping[str, JSON]) -> None:
    fps = _obj(k, "fingerprints", _get(k, b, "fingerprints"))
    if not fps:
        raise _fail(k, "fingerprints", "must not be empty")
    for silo, fp in fps.items():
        _hex(k, f"fingerprints.{silo}", fp, _HASH_HEX_RE)


def _global_model(k: str, b: Mapping[str, JSON]) -> None:
    _hex(k, "model_hash", _get(k, b, "model_hash"), _HASH_HEX_RE)


def _privacy_attestation(k: str, b: Mapping[str, JSON]) -> None:
    _str(k, "silo", _get(k, b, "silo"))
    att = _obj(k, "attestation", _get(k, b, "attestation"))
    _num(k, "attestation.epsilon", _get(k, att, "epsilon"))
    delta = _num(k, "attestation.delta", _get(k, att, "delta"))
    if delta >= 1:
        raise _fail(k, "attestation.delta", "must be < 1")
    _int(k, "attestation.round", _get(k, att, "round"))
    _hex(k, "signature", _get(k, b, "signature"), _ED25519_SIG_HEX_RE)
    _hex(k, "signing_payload", _get(k, b, "signing_payload"))
    _num(k, "recomputed_epsilon", _get(k, b, "recomputed_epsilon"))
    _str(k, "accountant", _get(k, b, "accountant"))


def _budget_refusal(k: str, b: Mapping[str, JSON]) -> None:
    _str(k, "silo", _get(k, b, "silo"))
    _str(k, "reason", _get(k, b, "reason"))


def _accountant_fallback(k: str, b: Mapping[str, JSON]) -> None:
    _str(k, "from_accountant", _get(k, b, "from_accountant"))
    _str(k, "to_accountant", _get(k, b, "to_accountant"))
    _str(k, "reason", _get(k, b, "reason"))
    _opt_str(k, b, "silo")


def _verification_failure(k: str, b: Mapping[str, JSON]) -> None:
    _str(k, "what", _get(k, b, "what"))
    _str(k, "reason", _get(k, b, "reason"))
    _opt_str(k, b, "silo")


_SEVERITIES = frozenset({"info", "warning", "critical"})


def _incident(k: str, b: Mapping[str, JSON]) -> None:
    if _get(k, b, "severity") not in _SEVERITIES:
        raise _fail(k, "severity", f"must be one of {sorted(_SEVERITIES)}")
    _str(k, "description", _get(k, b, "description"))
    _opt_str(k, b, "silo")


def _checkpoint(k: str, b: Mapping[str, JSON]) -> None:
    _int(k, "size", _get(k, b, "size"))
    _hex(k, "root", _get(k, b, "root"), _HASH_HEX_RE)


def _roster_changed(k: str, b: Mapping[str, JSON]) -> None:
    _str(k, "roster_version", _get(k, b, "roster_version"))
    _int(k, "version", _get(k, b, "version"), minimum=2)
    _hex(k, "previous", _get(k, b, "previous"), _HASH_HEX_RE)
    _hex(k, "digest", _get(k, b, "digest"), _HASH_HEX_RE)
    _hex(k, "roster_fingerprint", _get(k, b, "roster_fingerprint"), _HASH_HEX_RE)
    _ids(k, "added", _get(k, b, "added"))
    _ids(k, "removed", _get(k, b, "removed"))
    rotated = b.get("rotated", [])  # absent in ledgers written before key rotation
    if not isinstance(rotated, list | tuple):
        raise _fail(k, "rotated", "must be a list of {id, old_key, new_key}")
    for i, item in enumerate(rotated):
        if not isinstance(item, Mapping):
            raise _fail(k, f"rotated[{i}]", "must be an object {id, old_key, new_key}")
        _str(k, f"rotated[{i}].id", item.get("id"))
        _hex(k, f"rotated[{i}].old_key", item.get("old_key"), _HASH_HEX_RE)
        _hex(k, f"rotated[{i}].new_key", item.get("new_key"), _HASH_HEX_RE)
    governance = b.get("governance")  # absent unless the version hands over to a new governance
    if governance is not None:
        if not isinstance(governance, Mapping):
            raise _fail(k, "governance", "must be an object {governors, quorum}")
        governors = governance.get("governors")
        if not isinstance(governors, list | tuple) or not governors:
            raise _fail(k, "governance.governors", "must be a non-empty list of keys")
        for i, key in enumerate(governors):
            _hex(k, f"governance.governors[{i}]", key, _HASH_HEX_RE)
        _int(k, "governance.quorum", governance.get("quorum"), minimum=1)
    signers = _get(k, b, "signers")
    if not isinstance(signers, list | tuple):
        raise _fail(k, "signers", "must be a list of governor keys")
    for i, key in enumerate(signers):
        _hex(k, f"signers[{i}]", key, _HASH_HEX_RE)


_VALIDATORS: Final[dict[EventKind, Callable[[str, Mapping[str, JSON]], None]]] = {
    EventKind.FEDERATION_CREATED: _federation_created,
    EventKind.ROUND_OPENED: _round_opened,
    EventKind.ROUND_CLOSED: _round_closed,
    EventKind.ROUND_ABORTED: _round_aborted,
    EventKind.PARTICIPANTS: _participants,
    EventKind.KEY_FINGERPRINTS: _key_fingerprints,
    EventKind.GLOBAL_MODEL: _global_model,
    EventKind.PRIVACY_ATTESTATION: _privacy_attestation,
    EventKind.BUDGET_REFUSAL: _budget_refusal,
    EventKind.ACCOUNTANT_FALLBACK: _accountant_fallback,
    EventKind.VERIFICATION_FAILURE: _verification_failure,
    EventKind.INCIDENT: _incident,
    EventKind.CHECKPOINT: _checkpoint,
    EventKind.ROSTER_CHANGED: _roster_changed,
}

#: Kinds that always belong to one round (``round`` must be an integer).
ROUND_KINDS: Final = frozenset(
    {
        EventKind.ROUND_OPENED,
        EventKind.ROUND_CLOSED,
        EventKind.ROUND_ABORTED,
        EventKind.PARTICIPANTS,
        EventKind.KEY_FINGERPRINTS,
        EventKind.GLOBAL_MODEL,
        EventKind.PRIVACY_ATTESTATION,
    }
)


def validate_body(kind: EventKind, body: Mapping[str, JSON]) -> None:
    """Check that ``body`` has the fields its kind requires, with the right types.

    Raises:
        SchemaError: naming the kind and the first bad field.
    """
    if not isinstance(body, Mapping):
        raise SchemaError(f"{kind}: body must be an object")
    _VALIDATORS[kind](str(kind), body)


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _freeze(value: JSON) -> JSON:
    """A deep read-only copy, so a logged event cannot change after it was checked."""
    # Scalars (most values) by exact type first: the ABC isinstance checks below cost more
    # than the copy itself.
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: JSON) -> JSON:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Event:
    """One privacy-relevant fact, validated on construction.

    Args:
        kind: what happened.
        federation: the federation id.
        round: the round number, or ``None`` for federation-wide events.
        body: the kind's fields (see :func:`validate_body`); copied and frozen.
        time: RFC 3339 UTC text (``...Z``); use :meth:`now` to stamp the current time.

    Raises:
        SchemaError: any field is missing or malformed.
    """

    kind: EventKind
    federation: str
    round: int | None
    body: Mapping[str, JSON]
    time: str

    def __post_init__(self) -> None:
        self._validate(check_encoding=True)

    def _validate(self, *, check_encoding: bool) -> None:
        try:
            kind = EventKind(self.kind)
        except ValueError:
            raise SchemaError(f"unknown event kind {self.kind!r}") from None
        object.__setattr__(self, "kind", kind)
        if not isinstance(self.federation, str) or not self.federation:
            raise SchemaError(f"{kind}: federation must be a non-empty string")
        rnd = self.round
        if rnd is not None and (isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0):
            raise SchemaError(f"{kind}: round must be null or an integer >= 0")
        if rnd is None and kind in ROUND_KINDS:
            raise SchemaError(f"{kind}: round is required for this kind")
        if not isinstance(self.time, str) or not _TIME_RE.match(self.time):
            raise SchemaError(f"{kind}: time must be RFC 3339 UTC like 2025-01-01T00:00:00Z")
        validate_body(kind, self.body)
        if check_encoding:
            try:
                canonical_json(self.body)  # rejects NaN, huge ints, non-JSON types up front
            except (TypeError, ValueError) as exc:
                raise SchemaError(f"{kind}: body is not canonical JSON: {exc}") from exc
        object.__setattr__(self, "body", _freeze(self.body))

    @classmethod
    def _from_canonical(
        cls, kind: str, federation: str, rnd: int | None, body: Mapping[str, JSON], time: str
    ) -> Event:
        # The fields were just parsed from canonical bytes, so encoding them cannot fail:
        # skip that one check (the verifier decodes 100,000 entries) but validate the rest.
        event = object.__new__(cls)
        for name, value in (
            ("kind", kind),
            ("federation", federation),
            ("round", rnd),
            ("body", body),
            ("time", time),
        ):
            object.__setattr__(event, name, value)
        event._validate(check_encoding=False)
        return event

    @classmethod
    def now(
        cls,
        kind: EventKind | str,
        *,
        federation: str,
        round: int | None = None,
        body: Mapping[str, JSON],
        clock: Callable[[], str] = utc_now,
    ) -> Event:
        """Build an event stamped with ``clock()`` (injectable for tests)."""
        return cls(EventKind(kind), federation, round, body, clock())

    def to_json(self) -> dict[str, JSON]:
        """The event as a plain JSON object, with the schema version."""
        return {
            "schema": SCHEMA_VERSION,
            "kind": str(self.kind),
            "federation": self.federation,
            "round": self.round,
            "body": _thaw(self.body),
            "time": self.time,
        }


_ENTRY_KEYS: Final = frozenset(
    {"schema", "index", "prev", "kind", "federation", "round", "body", "time"}
)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """An event at a ledger position: ``index`` and the previous entry's leaf hash ``prev``."""

    index: int
    prev: bytes
    event: Event

    def encode(self) -> bytes:
        """The canonical JSON bytes that are stored and hashed as the Merkle leaf."""
        obj = self.event.to_json()
        obj["index"] = self.index
        obj["prev"] = self.prev.hex()
        return canonical_json(obj)

    @classmethod
    def decode(cls, data: bytes) -> LedgerEntry:
        """Parse and validate entry bytes (canonical form, schema version, every field).

        Raises:
            SchemaError: the bytes are not a valid version-1 entry; the message says why.
        """
        try:
            obj = parse_canonical(data)
        except ValueError as exc:
            raise SchemaError(str(exc)) from exc
        if not isinstance(obj, dict):
            raise SchemaError("an entry must be a JSON object")
        if obj.get("schema") != SCHEMA_VERSION:
            raise SchemaError(f"unsupported schema version {obj.get('schema')!r}")
        if set(obj) != _ENTRY_KEYS:
            missing = sorted(_ENTRY_KEYS - set(obj))
            extra = sorted(set(obj) - _ENTRY_KEYS)
            raise SchemaError(f"entry fields wrong: missing {missing}, unexpected {extra}")
        index = obj["index"]
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise SchemaError("index must be an integer >= 0")
        prev = obj["prev"]
        if not isinstance(prev, str) or not _HASH_HEX_RE.match(prev):
            raise SchemaError("prev must be a 64-character lowercase hex hash")
        if not isinstance(obj["kind"], str):
            raise SchemaError("kind must be a string")
        event = Event._from_canonical(
            obj["kind"], obj["federation"], obj["round"], obj["body"], obj["time"]
        )
        return cls(index, bytes.fromhex(prev), event)
