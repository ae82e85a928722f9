"""What both configuration files share: the strict base model, TOML value types, the pinned roster, TLS files.

Loading a file validates it with a :class:`LoadContext`: relative paths are then resolved against the file's
directory and input files must exist. Built in Python (no context), the same models take paths as given.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

from coordinator.common import DEFAULT_MAX_MESSAGE_BYTES
from coordinator.config.errors import describe, in_file, kind, missing_error, value_error
from coordinator.errors import ConfigError
from secagg import InvalidParameters, InvalidSignature, Roster

__all__ = [
    "AggregationMode",
    "ConfigModel",
    "Count",
    "Ed25519Key",
    "EntryPoint",
    "FederationConfig",
    "GovernanceConfig",
    "InputPath",
    "LoadContext",
    "MessageBytes",
    "NonNegative",
    "OutputPath",
    "Positive",
    "Probability",
    "RosterPin",
    "TLSPaths",
    "Text",
    "default_from",
    "read_toml",
    "resolve_path",
    "split_address",
]

MIN_MESSAGE_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC channel options are C ints
_LOOPBACK_NAMES = frozenset({"localhost"})
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class LoadContext:
    """Validation context while loading a file: relative paths resolve against ``base``, inputs must exist.

    Attributes:
        base: the configuration file's directory.
        roster: the file's roster, verified under its pinned key, once it is (defaults and checks depend on it).
        roster_file: where that roster was read from.
    """

    base: Path
    roster: Roster | None = None
    roster_file: Path | None = None


class ConfigModel(BaseModel):
    """Base of every table: unknown keys refused, immutable, no type coercion (``"1"`` is not ``1``).

    Building a table (``RoundsConfig(count=0, ...)``) or loading a file raises :class:`ConfigError` with our
    one-line message (:mod:`coordinator.config.errors`); pydantic's own ``model_validate`` keeps pydantic's
    ``ValidationError``.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,  # TOML has types: true is no count, 2.0 no integer, "1.0" no number
        allow_inf_nan=False,
        use_attribute_docstrings=True,  # each field's docstring is its description in the JSON Schema
    )

    _table: ClassVar[tuple[str, ...]] = ()
    """Where this model sits in its file, for messages about a table built on its own."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(describe(exc, type(self), self._table)) from None

    # Tell pydantic this __init__ only translates errors: a nested table is then validated by the outer model
    # (keeping the load context and the full key path), not through this __init__. pydantic's RootModel does
    # the same.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def _parse(cls, doc: dict[str, Any], context: LoadContext) -> Self:
        """Validate a TOML document (its top level) read from a file."""
        try:
            return cls.model_validate(doc, context=context)
        except ValidationError as exc:
            raise ConfigError(describe(exc, cls)) from None


def default_from(text: str) -> dict[str, Any]:
    """``json_schema_extra`` for a key the file may omit although the model needs it: the loader derives it.

    The JSON Schema then lists the key as optional, with ``text`` as its default (``x-default``).
    """
    return {"x-default": text}


def resolve_path(
    value: object, context: object, *, must_exist: bool, key: str | None = None
) -> Path:
    """A path value: in a file (``context`` a :class:`LoadContext`) made absolute and, if asked, checked.

    Raises:
        PydanticCustomError: not a non-empty string or path, or a missing input file (:func:`value_error`).
    """
    if isinstance(value, str):
        if not value:
            raise value_error("must not be empty", key=key)
        value = Path(value)
    if not isinstance(value, Path):
        raise value_error(f"expected a string (a path), got {kind(value)}", key=key)
    if isinstance(context, LoadContext):
        value = Path(os.path.abspath(context.base / value))
        if must_exist and not value.exists():
            raise value_error(f"{value} does not exist", key=key)
    return value


def _path(*, must_exist: bool) -> BeforeValidator:
    def resolve(value: object, info: ValidationInfo) -> Path:
        return resolve_path(value, info.context, must_exist=must_exist)

    return BeforeValidator(resolve)


def _ed25519_key(value: object) -> object:
    if isinstance(value, str):
        if not _HEX_KEY.fullmatch(value):
            raise value_error("expected a 32-byte Ed25519 public key as 64 hex digits")
        return bytes.fromhex(value)
    if isinstance(value, bytes) and len(value) != 32:
        raise value_error("must be a 32-byte Ed25519 public key")
    return value


Text = Annotated[str, StringConstraints(min_length=1)]
"""A non-empty string."""
InputPath = Annotated[Path, _path(must_exist=True)]
"""A file that must exist; relative to the configuration file's directory."""
OutputPath = Annotated[Path, _path(must_exist=False)]
"""A file or directory that is created if missing; relative to the configuration file's directory."""
Ed25519Key = Annotated[
    bytes,
    BeforeValidator(_ed25519_key),
    WithJsonSchema({"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}),
]
"""A 32-byte Ed25519 public key, written as 64 hex digits."""
Positive = Annotated[float, Field(gt=0)]
"""A positive number (finite: every model refuses inf and nan)."""
Probability = Annotated[float, Field(gt=0, lt=1)]
EntryPoint = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$"),
]
"""``"package.module:function"``: a function the coordinator or the silo imports and calls."""
Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
MessageBytes = Annotated[int, Field(ge=MIN_MESSAGE_BYTES, le=MAX_MESSAGE_BYTES)]
AggregationMode = Literal["masking", "paillier"]


class TLSPaths(ConfigModel):
    """The ``[tls]`` table: PEM files for mutual TLS."""

    _table = ("tls",)

    ca: InputPath
    """The consortium CA certificate every peer's certificate must chain to."""
    cert: InputPath
    """This endpoint's certificate, issued by the consortium CA."""
    key: InputPath
    """This endpoint's private key."""


class RosterPin(ConfigModel):
    """The keys both files start with: the federation, its signed roster and the consortium key it is pinned to.

    Notes:
        The consortium public key is *pinned* in each configuration and the roster must verify under it
        (DESIGN section 2): the coordinator cannot add members, and a swapped roster file is refused at
        start-up.
    """

    federation: Text
    """The federation id; must equal the roster's."""
    roster: InputPath
    """The signed roster file (silo id -> Ed25519 key, signed by the consortium)."""
    consortium_public_key: Ed25519Key
    """The pinned Ed25519 consortium public key (64 hex digits) the roster must verify under."""

    def load_roster(self) -> Roster:
        """Read the roster file and verify it under the pinned consortium key.

        Raises:
            ConfigError: unreadable, malformed, wrongly signed, or for another federation.
        """
        try:
            roster = Roster.loads(self.roster.read_text(encoding="utf-8"))
            roster.verify(self.consortium_public_key)
        except OSError as exc:
            raise ConfigError(f"roster: cannot read {self.roster}: {exc.strerror}") from exc
        except InvalidSignature as exc:
            raise ConfigError(
                f"roster: {self.roster} does not verify under consortium_public_key: {exc}"
            ) from exc
        except InvalidParameters as exc:
            raise ConfigError(f"roster: {self.roster}: {exc}") from exc
        if roster.federation != self.federation:
            raise ConfigError(
                f"federation: {self.federation!r} does not match the roster's federation "
                f"{roster.federation!r}"
            )
        return roster


class GovernanceConfig(ConfigModel):
    """The ``[governance]`` table: roster versions K of N governors sign (``secagg pki roster``), pinned here.

    Both files come from ``secagg pki install`` in this organisation's directory. The coordinator re-reads
    ``roster_version`` at every round open and adopts a new version there (never mid-round) once it carries K
    signatures of the pinned governors and extends the version in force; a silo fetches the versions the
    coordinator serves, checks them against the same pins and rewrites ``roster_version`` and ``roster``.
    """

    _table = ("governance",)

    roster_version: InputPath
    """The pinned roster version (``roster-version.json``): its roster must be the ``roster`` file's."""
    file: InputPath
    """The pinned governors and quorum (``governance.json``)."""


class FederationConfig(RosterPin):
    """What a coordinator's and a silo's file both say, and how either is loaded.

    Equality ignores :attr:`source`: two configurations are equal when they say the same.
    """

    _address: ClassVar[str]
    """The key of this endpoint's ``host:port`` (``listen`` or ``coordinator``)."""
    _port_zero: ClassVar[bool] = False
    """Whether port 0 (a free port, chosen when binding) is allowed."""

    tls: TLSPaths | None = Field(
        default=None,
        json_schema_extra=default_from("required unless `insecure_debug_no_tls = true`"),
    )
    """CA, certificate and private key for mutual TLS; absent only with ``insecure_debug_no_tls``."""
    mode: AggregationMode = "masking"
    """The aggregation protocol: ``"masking"`` (pairwise masks) or ``"paillier"`` (threshold Paillier)."""
    insecure_debug_no_tls: bool = False
    """No TLS. **Local debugging only**: refused unless this file's address (``listen``, ``coordinator``) is a
    loopback address; silo identities are then unauthenticated."""
    max_message_bytes: MessageBytes = DEFAULT_MAX_MESSAGE_BYTES
    """Largest gRPC message sent or accepted; streamed chunks stay below it."""
    governance: GovernanceConfig | None = None
    """Governed roster versions (masking mode): absent, the roster is fixed for the federation's life."""

    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The file this configuration was loaded from, if any."""
        return self._source

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return dict(self) == dict(other)

    @model_validator(mode="before")
    @classmethod
    def _roster_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        context = info.context
        if not (isinstance(context, LoadContext) and isinstance(data, dict)):
            return data
        if context.roster is None or context.roster_file is None:
            return data
        return cls._from_roster(data, context.roster, context.roster_file)

    @classmethod
    def _from_roster(cls, doc: dict[str, Any], roster: Roster, roster_file: Path) -> dict[str, Any]:
        """The file's document with the defaults that depend on its (verified) roster; may refuse it."""
        return doc

    @model_validator(mode="after")
    def _reachable_and_secure(self) -> Self:
        """``host:port``; plaintext only on loopback, and mutual TLS otherwise.

        Notes:
            ``insecure_debug_no_tls`` exists for local debugging only and is refused unless the address is a
            loopback address, so it can never expose an unauthenticated endpoint to a network.
        """
        key = self._address
        value = getattr(self, key)
        addresses = [value] if isinstance(value, str) else list(value)
        if len(set(addresses)) != len(addresses):
            raise value_error("lists an address twice", key=key)
        for address in addresses:
            try:
                host, _ = split_address(address, allow_port_zero=self._port_zero)
            except ValueError as exc:
                raise value_error(str(exc), key=key) from None
            if self.insecure_debug_no_tls and not _is_loopback(host):
                raise value_error(
                    f"refused because {key} host {host!r} is not a loopback address "
                    "(plaintext is for local debugging only)",
                    key="insecure_debug_no_tls",
                )
        if self.tls is None and not self.insecure_debug_no_tls:
            raise missing_error("tls", "mutual TLS is mandatory")
        return self

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Load, validate and cross-check a configuration file.

        The roster is read and verified first: defaults (the threshold, a silo's shard) and checks (the threshold
        rules, the silo's membership) depend on it.

        Raises:
            ConfigError: naming the file and the key, for any unreadable, malformed, unknown, mistyped or
                inconsistent setting, or a roster that does not verify under the pinned key.
        """
        file, doc = read_toml(path)
        with in_file(file):
            pinned = {key: doc[key] for key in RosterPin.model_fields if key in doc}
            pin = RosterPin._parse(pinned, LoadContext(base=file.parent))
            context = LoadContext(
                base=file.parent, roster=pin.load_roster(), roster_file=pin.roster
            )
            config = cls._parse(doc, context)
        config._source = file
        return config


def read_toml(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The absolute path and the parsed document of a TOML file.

    Raises:
        ConfigError: the file cannot be read or is not valid TOML.
    """
    file = Path(os.path.abspath(path))
    try:
        with file.open("rb") as handle:
            return file, tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {file}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc


def split_address(address: str, *, allow_port_zero: bool) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` (IPv6 as ``[addr]:port``).

    Raises:
        ValueError: not ``host:port``, or the port is out of range.
    """
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [::1]:port
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected host:port (IPv6 as [addr]:port), got {address!r}")
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
