"""``serve.toml``: the coordinator's configuration (``secagg serve --config FILE``) and its tables."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import numpy as np
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from audits.database import is_postgresql
from coordinator.common import chunk_words
from coordinator.config.base import (
    ConfigModel,
    Count,
    EntryPoint,
    FederationConfig,
    InputPath,
    LoadContext,
    NonNegative,
    Positive,
    Probability,
    Text,
    default_from,
    resolve_path,
    split_address,
)
from coordinator.config.errors import kind, rule_error, value_error
from coordinator.errors import ConfigError
from secagg import (
    GraphParameters,
    InvalidParameters,
    Quantizer,
    Roster,
    check_threshold,
    minimum_threshold,
    secaggplus_parameters,
)

__all__ = [
    "Deadlines",
    "LimitsConfig",
    "MaskingConfig",
    "MaskingDeadlines",
    "ModelConfig",
    "PaillierDeadlines",
    "PrivacyConfig",
    "RoundsConfig",
    "ServeConfig",
    "SiloDPConfig",
    "StorageConfig",
]

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


_MODEL_OPTIONS = (
    'initial_model = "FILE.npy" (a 1-D float32 vector), factory = "pkg.module:make_model" (called by the '
    'coordinator; a torch module\'s parameters are flattened) or init = "zeros" with size = N'
)


class ModelConfig(ConfigModel):
    """The ``[model]`` table: where the global model of round 0 comes from, and its vector length.

    Exactly one of ``initial_model``, ``factory`` and ``init`` says how the model starts: a model that silently
    started from zeros would overwrite the initialisation PyTorch gives a model (two runs at chance accuracy
    before the cause was found), so the choice is explicit. ``size`` is required with ``init = "zeros"``; with
    a file or a factory it is read from what they give, and must match when it is written too.
    """

    _table = ("model",)

    size: Count | None = Field(
        default=None, json_schema_extra=default_from("the length of the initial model")
    )
    """Number of float32 coordinates of the model."""
    initial_model: InputPath | None = None
    """A ``.npy`` file holding the 1-D float32 vector round 0 starts from."""
    factory: EntryPoint | None = None
    """``"pkg.module:make_model"``: a function of no arguments the coordinator calls at start-up; it returns a
    torch module (its parameters are flattened in ``parameters()`` order, as a silo's trainer does) or a 1-D
    float32 array. Only round 0 uses it: a restart resumes from the stored model."""
    init: Literal["zeros"] | None = None
    """``"zeros"``: start from the zero vector of ``size`` coordinates (for a model whose silos overwrite it,
    or tests)."""

    @model_validator(mode="before")
    @classmethod
    def _one_source(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        if "initial" in data:
            raise value_error("is now called initial_model", key="initial")
        given = [key for key in ("initial_model", "factory", "init") if data.get(key) is not None]
        if len(given) != 1:
            what = "only a size" if not given else "both " + " and ".join(given)
            raise rule_error(
                f"{what} given: say how the model starts, with exactly one of {_MODEL_OPTIONS}"
            )
        if given == ["init"] and "size" not in data:
            raise rule_error('init = "zeros" needs size = N (the number of coordinates)')
        initial = data.get("initial_model")
        if initial is None or not isinstance(info.context, LoadContext):
            return data
        path = resolve_path(initial, info.context, must_exist=True, key="initial_model")
        try:
            # mmap reads only the header: the size and dtype are known without loading the vector.
            vector = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            raise value_error(f"{path} is not a .npy array", key="initial_model") from None
        if not isinstance(vector, np.ndarray) or vector.ndim != 1 or vector.dtype != np.float32:
            raise value_error(f"{path} must hold a 1-D float32 vector", key="initial_model")
        length = int(vector.shape[0])
        if data.get("size", length) != length:
            raise rule_error(
                f"size {data['size']} does not match the {length} coordinates of {path}"
            )
        return {**data, "initial_model": path, "size": length}


class RoundsConfig(ConfigModel):
    """The ``[rounds]`` table: how many rounds, and the public protocol parameters of each.

    Notes:
        Threshold rules (t > (n + c)/2, ``min_cohort`` <= n) are checked against the roster's size with
        :func:`secagg.check_threshold` (Bonawitz et al. CCS 2017, section 6.3) when the file is loaded; an
        omitted threshold defaults to the smallest safe one.
    """

    _table = ("rounds",)

    count: Count
    """Number of training rounds."""
    clip: Positive
    """L2 bound on each silo's update (public; quantization maps [-clip, clip] to integers)."""
    collusion: NonNegative = 0
    """Silos the coordinator may collude with, c; the threshold must exceed (n + c)/2."""
    threshold: int = Field(
        json_schema_extra=default_from(
            "the smallest safe threshold, (n + collusion) // 2 + 1; required with [governance]"
        )
    )
    """Shamir threshold t: how many silos must survive a round for its sum to be unmasked."""
    min_cohort: int = 3
    """Fewest silos a released sum may contain (at least 2, at most the roster size)."""
    bits: int = 16
    """Signed bits per quantized coordinate (with headroom for the sum, at most 32 in all)."""

    def check(self, n: int) -> None:
        """Check the threshold and quantization rules for a roster of ``n`` silos.

        Raises:
            ConfigError: the rule that failed, from :func:`secagg.check_threshold` or :class:`secagg.Quantizer`.
        """
        try:
            check_threshold(
                n=n, threshold=self.threshold, collusion=self.collusion, min_cohort=self.min_cohort
            )
        except InvalidParameters as exc:
            raise ConfigError(f"[rounds]: {exc}") from exc
        try:
            self.quantizer(n)
        except InvalidParameters as exc:
            raise ConfigError(f"[rounds] bits/clip: {exc}") from exc

    def quantizer(self, n: int) -> Quantizer:
        """The quantizer for a federation of ``n`` silos."""
        return Quantizer(clip=self.clip, bits=self.bits, max_silos=n)


class MaskingDeadlines(ConfigModel):
    """The ``[deadlines.masking]`` table: seconds each stage of a masking round waits for the silos.

    A silo that has not answered when its stage's deadline passes counts as dropped (DESIGN 4.3); a stage
    closes earlier once every expected silo has answered.
    """

    _table = ("deadlines", "masking")

    advertise: Positive = 30.0
    """Advertise keys: every silo announces its signed per-round public keys."""
    share_keys: Positive = 30.0
    """Share keys: every silo sends its encrypted Shamir shares through the coordinator."""
    masked_input: Positive = 120.0
    """Masked input: every silo trains and streams its masked update. Local training happens here: a silo
    trains only once the share-keys stage has admitted it (DESIGN 4.4), so this deadline must cover a silo's
    training as well as its upload."""
    consistency: Positive = 30.0
    """Consistency check: survivors sign the list of silos whose masked input arrived."""
    unmask: Positive = 30.0
    """Unmask: survivors reveal the shares that remove the masks."""


class MaskingConfig(ConfigModel):
    """The ``[masking]`` table: when masking mode switches from the full graph to the SecAgg+ graph.

    Notes:
        Above ``graph_above`` silos every silo masks with and secret-shares to only k neighbours of a Harary
        graph (Bell et al., CCS 2020; :mod:`secagg.masking.graph`), with k and the per-neighbourhood threshold
        computed from the roster's size, ``dropout_rate``, ``[rounds] collusion`` and the two failure bounds;
        ``[rounds] threshold`` then applies only at or below ``graph_above``. At cross-silo sizes the full graph
        costs little and needs no probabilistic argument, hence the default (DESIGN 4; Google's implementation
        also keeps the full graph below about 65 clients).
    """

    _table = ("masking",)

    graph_above: NonNegative = 64
    """Rosters with more silos than this use the SecAgg+ graph; at or below it, the full graph."""
    dropout_rate: float = Field(default=0.05, ge=0, lt=1)
    """Fraction of silos the graph must tolerate dropping out during a round (at any stage)."""
    security_bits: int = Field(default=40, ge=20, le=128)
    """The graph breaks privacy with probability at most 2^-security_bits."""
    correctness_bits: int = Field(default=20, ge=1, le=64)
    """A round with the planned dropouts fails to unmask with probability at most 2^-correctness_bits."""

    def graph(self, *, n: int, collusion: int) -> GraphParameters | None:
        """The SecAgg+ graph for ``n`` silos, or ``None`` for the full graph.

        Raises:
            ConfigError: no Harary graph meets the bounds (the message says so, and how to fix it).
        """
        if n <= self.graph_above:
            return None
        try:
            return secaggplus_parameters(
                n=n,
                dropout_rate=self.dropout_rate,
                collusion=collusion,
                security=Fraction(1, 2**self.security_bits),
                correctness=Fraction(1, 2**self.correctness_bits),
            )
        except InvalidParameters as exc:
            raise ConfigError(f"[masking]: {exc}, or raise graph_above to {n}") from exc


GOVERNED_THRESHOLD = (
    "[governance] needs an explicit [rounds] threshold: the default follows the roster's size at start-up, "
    "so a restart on a later roster version would change it; set one that is safe for every size you plan"
)

GRAPH_WITH_SILO_DP = (
    "[silo_dp] does not run on the SecAgg+ graph yet (a silo sees only its neighbourhood, not the cohort it "
    "would size its noise for): raise [masking] graph_above to the roster's size"
)


class PaillierDeadlines(ConfigModel):
    """The ``[deadlines.paillier]`` table: seconds each stage of a Paillier round waits for the silos.

    ``collect`` and ``decrypt`` default to the masking stages they stand for (``advertise`` + ``masked_input``,
    ``consistency`` + ``unmask``); ``challenge`` and ``fold`` are short exchanges of a few kilobytes.
    """

    _table = ("deadlines", "paillier")

    collect: Positive = 150.0
    """Collect: every silo trains and streams its packed ciphertexts (local training happens here)."""
    challenge: Positive = 30.0
    """Challenge: key holders fetch the aggregate and post their spot-check positions and fold seeds."""
    fold: Positive = 30.0
    """Fold: every contributor returns its signed, proven folds for the key holders' seeds. A contributor
    that does not answer makes the round abort: its ciphertexts are in the aggregate and cannot be checked."""
    decrypt: Positive = 60.0
    """Decrypt: key holders check the aggregate and return their partial decryptions."""


class Deadlines(ConfigModel):
    """The ``[deadlines]`` table: per-stage deadlines, in seconds, for each aggregation mode."""

    _table = ("deadlines",)

    join: Positive = 600.0
    """Round 0 opens once ``[rounds] min_cohort`` silos have joined; if fewer have when this many seconds after
    the coordinator started have passed, no round opens and ``secagg serve`` exits with code 5."""
    masking: MaskingDeadlines = Field(default_factory=MaskingDeadlines)
    """Deadlines of a masking round's five stages."""
    paillier: PaillierDeadlines = Field(default_factory=PaillierDeadlines)
    """Deadlines of a Paillier round's two stages."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """Stage deadlines used to sit in ``[deadlines]`` itself: say where they went."""
        if isinstance(data, dict):
            for key in data:
                if key in MaskingDeadlines.model_fields:
                    raise value_error(
                        "deadlines are per mode now: move it under [deadlines.masking] "
                        "(Paillier mode reads [deadlines.paillier] collect, challenge, fold and decrypt)",
                        key=key,
                    )
                if key == "round_start":
                    raise value_error("is no longer used: remove it", key=key)
        return data


class PrivacyConfig(ConfigModel):
    """The ``[privacy]`` table: the federation's privacy ceiling and how it is enforced.

    Without it the federation runs without a ceiling: attestations are verified and recorded when sent, but not
    required.

    Notes:
        The coordinator does not trust a silo's claimed epsilon: it recomputes it from the attested mechanism
        parameters with its own RDP accountant (``dp.accounting.check_attestation``) over everything that silo
        attested before. Silos enforce their own budgets first; this ceiling is the consortium's second line.
    """

    _table = ("privacy",)

    epsilon: Positive
    """The most record-level epsilon any silo may have spent, over all rounds (the ceiling)."""
    delta: Probability
    """The largest delta a silo's attestation may state."""
    on_violation: Literal["refuse", "flag"] = "refuse"
    """``"refuse"`` rejects the upload of a silo whose attestation under-reports its epsilon or exceeds the
    ceiling; ``"flag"`` accepts it and records an incident in the audit ledger."""
    require_attestation: bool = True
    """Refuse an upload that carries no signed privacy attestation."""
    unit_of_privacy: str = "one record (a patient or customer) of one silo"
    """What one "record" is, in words, for the audit report (NIST SP 800-226 asks for it)."""

    @field_validator("unit_of_privacy")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise rule_error("must not be empty")
        return value


class SiloDPConfig(ConfigModel):
    """The ``[silo_dp]`` table: silo-level distributed DP on top of secure aggregation (masking mode only).

    Every silo clips its update to ``[rounds] clip``, rotates, scales, rounds to integers and adds its share of
    integer noise before masking, so the securely aggregated sum carries the central noise and nobody ever holds
    a noiseless sum (``dp.distributed``; Kairouz, Liu and Steinke 2021; Agarwal, Kairouz and Liu 2021). The noise
    shares are sized for ``n - dropouts_tolerated - [rounds] collusion`` honest survivors; a round with fewer
    contributions than ``n - dropouts_tolerated`` is aborted rather than released with too little noise.
    """

    _table = ("silo_dp",)

    noise_multiplier: Positive
    """Central noise standard deviation over the clip norm."""
    mechanism: Literal["skellam", "ddg"] = "skellam"
    """``"skellam"`` or ``"ddg"`` (distributed discrete Gaussian)."""
    bits: Annotated[int, Field(ge=8, le=32)] = 20
    """Bit width of the modular sum, at most 32 (the masking ring); the scale is chosen so the sum wraps with
    probability below 1e-9 per round, and wraps that happen are counted and recorded."""
    dropouts_tolerated: NonNegative = 0
    """Silos that may drop out of a round without weakening the guarantee."""
    rotation: bool = True
    """Randomized Hadamard rotation before rounding (spreads the mass; recommended)."""
    delta: Probability = 1e-5
    """The delta of the silo-level epsilon recorded per round."""


def _fingerprints(value: object) -> object:
    if not isinstance(value, list | tuple | set | frozenset):
        raise value_error(f"expected a list of strings, got {kind(value)}")
    for entry in value:
        if not isinstance(entry, str):
            raise value_error(f"expected a list of strings, got a list holding {kind(entry)}")
    lowered = frozenset(entry.lower() for entry in value)
    if not all(_FINGERPRINT.fullmatch(entry) for entry in lowered):
        raise value_error("each entry must be a SHA-256 fingerprint (64 hex digits)")
    return lowered


Fingerprints = Annotated[
    frozenset[Annotated[str, StringConstraints(pattern="^[0-9a-fA-F]{64}$")]],
    BeforeValidator(_fingerprints),
]


def _storage_url(value: object, info: ValidationInfo) -> str:
    if isinstance(value, str) and is_postgresql(value):
        return value
    return str(resolve_path(value, info.context, must_exist=False))


def _storage_table(value: object) -> object:
    if isinstance(value, str | Path):
        return {"url": value}
    if not isinstance(value, dict | StorageConfig):
        raise value_error(f"expected a path or a [storage] table, got {kind(value)}")
    return value


class StorageConfig(ConfigModel):
    """The ``[storage]`` table: the database of rounds, global models and the audit ledger (DESIGN 7, 8).

    ``storage = "coordinator.sqlite"`` (a plain path) is short for ``[storage] url = "coordinator.sqlite"``.
    One database (file) per federation: the ledger in it is that federation's log.
    """

    _table = ("storage",)

    url: Annotated[str, BeforeValidator(_storage_url)]
    """A SQLite file (relative to this file; created if missing), or a PostgreSQL URL
    ``postgresql://user@host:port/dbname`` (needs the ``postgresql`` extra, psycopg 3). Leave the password out
    of the file: libpq reads it from ``PGPASSWORD`` or ``~/.pgpass``."""
    standby: bool = False
    """When another coordinator already serves this storage: ``false`` refuses to start, ``true`` stands by and
    takes over when it stops or dies (replicas; on PostgreSQL the leader is elected by an advisory lock)."""

    @property
    def target(self) -> str | Path:
        """What :class:`coordinator.store.SQLStore` and the ledger open: the URL, or the SQLite path."""
        return self.url if is_postgresql(self.url) else Path(self.url)


def _metrics_address(value: str) -> str:
    split_address(value, allow_port_zero=True)  # its ValueError names what is wrong
    return value


class MetricsConfig(ConfigModel):
    """The ``[metrics]`` table: Prometheus metrics and health probes over plain HTTP (DESIGN 8, Operations).

    The listener needs no client certificate, so an orchestrator can probe it; it exposes counts, durations
    and each silo's recomputed epsilon (already in the audit ledger), never a key, mask, share or update.
    Bind it to loopback or an operations network, not to the silos' network.
    """

    _table = ("metrics",)

    listen: Annotated[str, AfterValidator(_metrics_address)]
    """``host:port`` of ``/metrics``, ``/healthz`` (200 while the process runs) and ``/readyz`` (200 only while
    this replica leads and serves); port 0 picks a free port."""


class LimitsConfig(ConfigModel):
    """The ``[limits]`` table: how much of the coordinator one silo, and everyone together, may hold (DESIGN 8).

    Beyond a limit a call is refused at once with RESOURCE_EXHAUSTED (the SDK retries it with backoff), so a
    silo that opens many long polls or streams cannot starve another silo's ``Join`` or upload: what it holds
    beyond its own share is refused, not queued. An honest silo makes one or two calls at a time.
    """

    _table = ("limits",)

    calls_per_silo: Count = 16
    """Calls one silo may have in flight at once (long polls and streams included)."""
    streams_per_silo: Count = 2
    """Upload and download streams one silo may have in flight at once (within ``calls_per_silo``)."""
    max_concurrent_rpcs: Count = 4096
    """Calls in flight at once from every caller together (the global bound)."""
    workers: Annotated[int, Field(ge=1, le=256)] = 8
    """Threads that run the calls' work (store writes, stage processing, folding upload chunks); waiting calls
    hold none. Work is queued per silo and served round-robin."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.streams_per_silo > self.calls_per_silo:
            raise rule_error(
                f"streams_per_silo ({self.streams_per_silo}) cannot exceed calls_per_silo "
                f"({self.calls_per_silo}): every stream is also a call",
                key="streams_per_silo",
            )
        if self.calls_per_silo > self.max_concurrent_rpcs:
            raise rule_error(
                f"calls_per_silo ({self.calls_per_silo}) cannot exceed max_concurrent_rpcs "
                f"({self.max_concurrent_rpcs})",
                key="calls_per_silo",
            )
        return self


class ServeConfig(FederationConfig):
    """The coordinator's configuration, ``serve.toml`` (``secagg serve --config FILE``).

    Loading also reads the roster, verifies it with the pinned consortium key and checks the threshold rules
    against its size, so a configuration that loads is one a round can run with.
    """

    _address = "listen"
    _port_zero = True

    listen: Text
    """``host:port`` to bind (IPv6 as ``[addr]:port``; port 0 picks a free port)."""
    storage: Annotated[StorageConfig, BeforeValidator(_storage_table)]
    """Where rounds, models and the audit ledger are kept: a SQLite file path, or a ``[storage]`` table."""
    audit_key: InputPath
    """The Ed25519 private key that signs the audit ledger's checkpoints: its encrypted PEM file, or, for a key
    kept in a PKCS#11 token, the ``audit.key.uri`` file ``secagg pki request --audit-key`` wrote (the PIN comes
    from ``SECAGG_PKCS11_PIN_FILE``)."""
    model: ModelConfig
    """Where round 0's global model comes from (a file, a factory or zeros) and its size."""
    rounds: RoundsConfig
    """Round count and protocol parameters (the threshold resolved when omitted)."""
    deadlines: Deadlines = Field(default_factory=Deadlines)
    """Per-stage deadlines of each mode."""
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    """When masking mode uses the SecAgg+ graph instead of the full graph."""
    privacy: PrivacyConfig | None = None
    """The federation's privacy ceiling and attestation policy; absent for a federation without a ceiling."""
    silo_dp: SiloDPConfig | None = None
    """Silo-level distributed DP (masking mode only); absent for none."""
    paillier_public_key: InputPath | None = None
    """The joint Paillier public key (``secagg pki paillier``); required in Paillier mode and only there."""
    revoked_certificates: Fingerprints = frozenset()
    """SHA-256 fingerprints (hex) of client certificates to refuse."""
    metrics: MetricsConfig | None = None
    """Prometheus metrics and health probes on their own listener; absent: no listener."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Per-silo and global concurrency limits, and the worker threads."""
    revocation_list: InputPath | None = None
    """The consortium CA's signed revocation list (PEM X.509 CRL from ``secagg pki revoke``); re-read when the
    file changes, so a revoked silo is refused at its next call. Needs ``[tls]``."""

    @classmethod
    def _from_roster(cls, doc: dict[str, Any], roster: Roster, roster_file: Path) -> dict[str, Any]:
        """An omitted threshold is the smallest safe one for the roster's size (DESIGN 4.3).

        A governed federation (``[governance]``) must set it: the roster in force changes while it runs, so a
        default computed at start-up from whichever version is pinned then would let a restart change the
        threshold the silos agreed to.
        """
        rounds = doc.get("rounds")
        explicit = isinstance(rounds, dict) and "threshold" in rounds
        if "governance" in doc and not explicit:
            raise rule_error(GOVERNED_THRESHOLD)
        if not isinstance(rounds, dict) or explicit:
            return doc
        collusion = rounds.get("collusion", 0)
        if type(collusion) is not int:  # validation names the bad collusion
            return doc
        threshold = minimum_threshold(len(roster.members), collusion)
        return {**doc, "rounds": {**rounds, "threshold": threshold}}

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Self:
        if (self.mode == "paillier") != (self.paillier_public_key is not None):
            raise rule_error(
                "is required in Paillier mode and only there", key="paillier_public_key"
            )
        if self.revocation_list is not None and self.tls is None:
            raise rule_error(
                "needs [tls]: the list is checked against its CA", key="revocation_list"
            )
        if self.mode == "paillier" and self.silo_dp is not None:
            raise rule_error("[silo_dp] is available in masking mode only")
        if self.governance is not None and (self.mode == "paillier" or self.silo_dp is not None):
            raise rule_error(
                "[governance] (roster versions adopted mid-federation) is available in masking mode without "
                "[silo_dp] only: the Paillier key and the silo-level DP plan are sized for a fixed roster"
            )
        if isinstance(info.context, LoadContext) and info.context.roster is not None:
            # the threshold rules against the roster's size; the ConfigError passes through pydantic as it is
            self.rounds.check(len(info.context.roster.members))
            if self.mode == "masking":
                graph = self.masking.graph(
                    n=len(info.context.roster.members), collusion=self.rounds.collusion
                )
                if graph is not None and self.silo_dp is not None:
                    raise rule_error(GRAPH_WITH_SILO_DP)
        return self

    @property
    def chunk_bytes(self) -> int:
        """Largest vector payload per streamed chunk: below ``max_message_bytes``, a multiple of 4 bytes."""
        return chunk_words(self.max_message_bytes) * 4
