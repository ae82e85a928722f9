"""TOML configuration of ``secagg serve`` and ``secagg silo``: strict loading into frozen dataclasses.

Every key is type-checked, unknown keys are refused (a typo must not silently fall back to a default), relative
paths are resolved against the configuration file's directory, and every error is a :class:`ConfigError` naming
the file and the key. Loading also reads the roster, verifies it with the pinned consortium key and checks the
threshold rules against its size, so a configuration that loads is one a round can run with.

Notes:
    - The consortium public key is *pinned* in each configuration and the roster must verify under it
      (DESIGN section 2): the coordinator cannot add members, and a swapped roster file is refused at start-up.
    - Threshold rules (t > (n + c)/2, ``min_cohort`` <= n) are checked with :func:`secagg.check_threshold`
      (Bonawitz et al. CCS 2017, section 6.3); an omitted threshold defaults to the smallest safe one.
    - ``insecure_debug_no_tls`` exists for local debugging only and is refused unless the coordinator address
      is a loopback address, so it can never expose an unauthenticated endpoint to a network.
    - Privacy parameters of the example task (``epsilon``, ``delta``) are validated here (epsilon > 0 and finite,
      0 < delta < 1); the trainer, which knows the shard size, should also insist on delta < 1/records
      (Dwork & Roth 2014, section 2.3).
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import math
import os
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from coordinator.common import DEFAULT_MAX_MESSAGE_BYTES, chunk_words
from coordinator.errors import ConfigError, Unauthorized
from coordinator.pki import ConsortiumPaths
from secagg import (
    InvalidParameters,
    InvalidSignature,
    Quantizer,
    Roster,
    RoundConfig,
    check_threshold,
    minimum_threshold,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Deadlines",
    "ModelConfig",
    "PrivacyConfig",
    "RoundsConfig",
    "ServeConfig",
    "SiloDPConfig",
    "SiloConfig",
    "SiloPolicy",
    "TLSPaths",
    "TaskConfig",
    "chunk_words",
    "write_demo_configs",
]

_MIN_MESSAGE_BYTES = 64 * 1024
_MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC channel options are C ints
_LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass(frozen=True, kw_only=True)
class TLSPaths:
    """The ``[tls]`` table: consortium CA certificate, own certificate and own private key (PEM files)."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The ``[model]`` table: the global model's vector length, optionally with an initial vector.

    Attributes:
        size: number of float32 coordinates of the model.
        initial: a ``.npy`` file holding a 1-D float32 vector of length ``size``, or ``None`` for zeros.
    """

    size: int
    initial: Path | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError("[model] size must be >= 1")


@dataclass(frozen=True, kw_only=True)
class RoundsConfig:
    """The ``[rounds]`` table: how many rounds, and the public protocol parameters of each.

    Attributes:
        count: number of training rounds.
        threshold: Shamir threshold t (resolved to :func:`secagg.minimum_threshold` when omitted).
        collusion: silos the coordinator may collude with, c.
        min_cohort: fewest silos a released sum may contain.
        clip: L2 bound on each silo's update.
        bits: signed bits per quantized coordinate.
    """

    count: int
    threshold: int
    clip: float
    collusion: int = 0
    min_cohort: int = 3
    bits: int = 16

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError("[rounds] count must be >= 1")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError("[rounds] clip must be a positive finite number")
        if self.collusion < 0:
            raise ConfigError("[rounds] collusion must be >= 0")

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


@dataclass(frozen=True, kw_only=True)
class Deadlines:
    """The ``[deadlines]`` table, in seconds: how long each stage waits before a silo counts as dropped."""

    advertise: float = 30.0
    share_keys: float = 30.0
    masked_input: float = 120.0
    consistency: float = 30.0
    unmask: float = 30.0
    round_start: float = 600.0

    def __post_init__(self) -> None:
        for name in _field_names(self):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"[deadlines] {name} must be a positive number of seconds")


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """The ``[privacy]`` table of ``secagg serve``: the federation's privacy ceiling and how it is enforced.

    Attributes:
        epsilon: the most record-level epsilon any silo may have spent, over all rounds (the ceiling).
        delta: the largest delta a silo's attestation may state.
        on_violation: ``"refuse"`` (default) rejects the upload of a silo whose attestation under-reports its
            epsilon or exceeds the ceiling; ``"flag"`` accepts it and records an incident in the audit ledger.
        require_attestation: refuse an upload that carries no signed privacy attestation (default).
        unit_of_privacy: what one "record" is, in words, for the audit report (NIST SP 800-226 asks for it).

    Notes:
        The coordinator does not trust a silo's claimed epsilon: it recomputes it from the attested mechanism
        parameters with its own RDP accountant (``dp.accounting.check_attestation``) over everything that silo
        attested before. Silos enforce their own budgets first; this ceiling is the consortium's second line.
    """

    epsilon: float
    delta: float
    on_violation: str = "refuse"
    require_attestation: bool = True
    unit_of_privacy: str = "one record (a patient or customer) of one silo"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError("[privacy] epsilon must be a positive finite number")
        if not 0 < self.delta < 1:
            raise ConfigError("[privacy] delta must be in (0, 1)")
        if self.on_violation not in ("refuse", "flag"):
            raise ConfigError("[privacy] on_violation must be 'refuse' or 'flag'")
        if not self.unit_of_privacy.strip():
            raise ConfigError("[privacy] unit_of_privacy must not be empty")


@dataclass(frozen=True, kw_only=True)
class SiloDPConfig:
    """The ``[silo_dp]`` table of ``secagg serve``: silo-level distributed DP on top of secure aggregation.

    Every silo clips its update to ``[rounds] clip``, rotates, scales, rounds to integers and adds its share of
    integer noise before masking, so the securely aggregated sum carries the central noise and nobody ever holds
    a noiseless sum (``dp.distributed``; Kairouz, Liu and Steinke 2021; Agarwal, Kairouz and Liu 2021). The noise
    shares are sized for ``n - dropouts_tolerated - [rounds] collusion`` honest survivors; a round with fewer
    contributions than ``n - dropouts_tolerated`` is aborted rather than released with too little noise.

    Attributes:
        noise_multiplier: central noise standard deviation over the clip norm.
        mechanism: ``"skellam"`` (default) or ``"ddg"``.
        bits: bit width of the modular sum, at most 32 (the masking ring); the scale is chosen so the sum wraps
            with probability below ``1e-9`` per round, and wraps that happen are counted and recorded.
        dropouts_tolerated: silos that may drop out of a round without weakening the guarantee.
        rotation: randomized Hadamard rotation before rounding (spreads the mass; recommended).
        delta: the delta of the silo-level epsilon recorded per round.
    """

    noise_multiplier: float
    mechanism: str = "skellam"
    bits: int = 20
    dropouts_tolerated: int = 0
    rotation: bool = True
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ConfigError("[silo_dp] noise_multiplier must be a positive finite number")
        if self.mechanism not in ("skellam", "ddg"):
            raise ConfigError("[silo_dp] mechanism must be 'skellam' or 'ddg'")
        if not 8 <= self.bits <= 32:
            raise ConfigError("[silo_dp] bits must be in [8, 32] (the masking ring has 32 bits)")
        if self.dropouts_tolerated < 0:
            raise ConfigError("[silo_dp] dropouts_tolerated must be >= 0")
        if not 0 < self.delta < 1:
            raise ConfigError("[silo_dp] delta must be in (0, 1)")


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """The coordinator's configuration (``secagg serve --config FILE``).

    Attributes:
        federation: the federation id; must equal the roster's.
        listen: ``host:port`` to bind (port 0 picks a free port).
        storage: the SQLite database file.
        roster: the signed roster file.
        consortium_public_key: the pinned Ed25519 consortium key (32 bytes) the roster must verify under.
        tls: CA, certificate and key for mutual TLS; ``None`` only with ``insecure_debug_no_tls``.
        audit_key: the Ed25519 key that signs ledger checkpoints.
        model: the global model's size and optional initial vector.
        rounds: round count and protocol parameters (threshold already resolved).
        deadlines: per-stage deadlines.
        privacy: the federation's privacy ceiling and attestation policy; ``None`` for a federation without DP
            (attestations are then verified and recorded when sent, but not required).
        silo_dp: silo-level distributed DP, or ``None``.
        mode: ``"masking"`` (pairwise masks, the default) or ``"paillier"`` (threshold Paillier).
        paillier_public_key: the joint Paillier public key (``secagg pki paillier``); required in Paillier mode.
        insecure_debug_no_tls: serve without TLS. **Local debugging only**: refused unless ``listen`` is a
            loopback address; silo identities are then unauthenticated.
        revoked_certificates: SHA-256 fingerprints of client certificates to refuse.
        max_message_bytes: largest gRPC message accepted or sent; chunks stay below :attr:`chunk_bytes`.
        source: the file this configuration was loaded from, if any.
    """

    federation: str
    listen: str
    storage: Path
    roster: Path
    consortium_public_key: bytes
    tls: TLSPaths | None
    audit_key: Path
    model: ModelConfig
    rounds: RoundsConfig
    deadlines: Deadlines = field(default_factory=Deadlines)
    privacy: PrivacyConfig | None = None
    silo_dp: SiloDPConfig | None = None
    mode: str = "masking"
    paillier_public_key: Path | None = None
    insecure_debug_no_tls: bool = False
    revoked_certificates: frozenset[str] = frozenset()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_pinned_key(self.consortium_public_key)
        host, _ = _split_address("listen", self.listen, allow_port_zero=True)
        _check_tls_mode(self.tls, self.insecure_debug_no_tls, host, "listen")
        for fingerprint in self.revoked_certificates:
            if len(fingerprint) != 64 or not _is_lower_hex(fingerprint):
                raise ConfigError(
                    "revoked_certificates: each entry must be a SHA-256 fingerprint (64 lowercase hex digits)"
                )
        _check_message_bytes(self.max_message_bytes)
        _check_mode(self.mode)
        if (self.mode == "paillier") != (self.paillier_public_key is not None):
            raise ConfigError("paillier_public_key is required in Paillier mode and only there")
        if self.mode == "paillier" and self.silo_dp is not None:
            raise ConfigError("[silo_dp] is available in masking mode only")

    @property
    def chunk_bytes(self) -> int:
        """Largest vector payload per streamed chunk: below ``max_message_bytes``, a multiple of 4 bytes."""
        return chunk_words(self.max_message_bytes) * 4

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ServeConfig:
        """Load, validate and cross-check a coordinator configuration file.

        Raises:
            ConfigError: naming the file and the key, for any unreadable, malformed, unknown, mistyped or
                inconsistent setting, or a roster that does not verify under the pinned key.
        """
        file, doc = _read_toml(path)
        with _in_file(file):
            r = _Table(doc, file)
            federation = r.string("federation")
            listen = r.string("listen")
            storage = r.path("storage", must_exist=False)
            roster_path = r.path("roster")
            pinned = r.hex_key("consortium_public_key")
            audit_key = r.path("audit_key")
            insecure = r.boolean("insecure_debug_no_tls", False)
            revoked = r.string_list("revoked_certificates", ())
            max_message_bytes = r.integer("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
            tls = _tls(r.optional_table("tls") if insecure else r.table("tls"))
            model = _model(r.table("model"))

            roster = _verified_roster(roster_path, pinned, federation)
            n = len(roster.members)
            rounds = _rounds(r.table("rounds"), n)
            deadlines_table = r.optional_table("deadlines")
            deadlines = _deadlines(deadlines_table) if deadlines_table else Deadlines()
            privacy_table = r.optional_table("privacy")
            privacy = _privacy(privacy_table) if privacy_table else None
            silo_dp_table = r.optional_table("silo_dp")
            silo_dp = _silo_dp(silo_dp_table) if silo_dp_table else None
            mode = r.string("mode", "masking")
            paillier_public_key = r.optional_path("paillier_public_key")
            r.finish()
            return cls(
                federation=federation,
                listen=listen,
                storage=storage,
                roster=roster_path,
                consortium_public_key=pinned,
                tls=tls,
                audit_key=audit_key,
                model=model,
                rounds=rounds,
                deadlines=deadlines,
                privacy=privacy,
                silo_dp=silo_dp,
                mode=mode,
                paillier_public_key=paillier_public_key,
                insecure_debug_no_tls=insecure,
                revoked_certificates=frozenset(f.lower() for f in revoked),
                max_message_bytes=max_message_bytes,
                source=file,
            )

    def load_roster(self) -> Roster:
        """Read the roster file and verify it under the pinned consortium key.

        Raises:
            ConfigError: unreadable, malformed, wrongly signed, or for another federation.
        """
        return _verified_roster(self.roster, self.consortium_public_key, self.federation)


@dataclass(frozen=True, kw_only=True)
class SiloPolicy:
    """The ``[policy]`` table: what a silo insists on before it joins a round (the SDK compares the round config).

    Attributes:
        min_cohort: the silo refuses a round whose ``min_cohort`` is smaller.
        max_collusion_assumed: the number of silos the silo assumes may collude with the coordinator; it
            refuses a round whose collusion bound ``c`` (and hence threshold) is sized for fewer.
        min_silo_dp_noise_multiplier: when > 0, the silo refuses a round without silo-level distributed DP or
            with a smaller noise multiplier than this (the coordinator announces the parameters; the silo adds
            the noise, so it decides).
    """

    min_cohort: int = 3
    max_collusion_assumed: int = 0
    min_silo_dp_noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        if self.min_cohort < 2:
            raise ConfigError("[policy] min_cohort must be >= 2")
        if self.max_collusion_assumed < 0:
            raise ConfigError("[policy] max_collusion_assumed must be >= 0")
        if not (
            math.isfinite(self.min_silo_dp_noise_multiplier)
            and self.min_silo_dp_noise_multiplier >= 0
        ):
            raise ConfigError("[policy] min_silo_dp_noise_multiplier must be a finite number >= 0")

    def check_round(self, config: RoundConfig, roster: Roster) -> None:
        """Raises ``Unauthorized`` if the coordinator's round parameters are weaker than this policy."""
        if config.federation != roster.federation or config.n != len(roster.members):
            raise Unauthorized("round parameters do not match the pinned roster")
        if config.min_cohort < self.min_cohort:
            raise Unauthorized(
                f"round min_cohort {config.min_cohort} is below this silo's {self.min_cohort}"
            )
        needed = minimum_threshold(config.n, self.max_collusion_assumed)
        if config.threshold < needed:
            raise Unauthorized(
                f"threshold {config.threshold} is unsafe against {self.max_collusion_assumed} "
                f"colluding silos (need {needed})"
            )

    def check_silo_dp(self, noise_multiplier: float | None) -> None:
        """Raises ``Unauthorized`` if the announced silo-level noise is weaker than this policy."""
        floor = self.min_silo_dp_noise_multiplier
        if floor > 0 and (noise_multiplier is None or noise_multiplier < floor):
            announced = "none" if noise_multiplier is None else f"{noise_multiplier:g}"
            raise Unauthorized(
                f"silo-level DP noise multiplier {announced} is below this silo's minimum {floor:g}"
            )


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """The ``[task]`` table: parameters of the built-in example task (DP-SGD on a shard of a public dataset).

    Attributes:
        shard: which shard of the dataset this silo holds (default: its roster index - 1).
        num_shards: how many shards the dataset is split into (default: the roster size).
        seed: seed of the *public* data split and model initialisation; never of DP noise or masks, which use
            cryptographic randomness.
        local_epochs: local passes over the shard per round.
        lr: learning rate.
        batch_size: expected batch size (Poisson sampling rate = batch_size / shard size).
        epsilon: the silo's total privacy budget epsilon over all rounds.
        delta: the budget's delta.
    """

    shard: int
    num_shards: int
    seed: int = 0
    local_epochs: int = 1
    lr: float = 0.1
    batch_size: int = 32
    epsilon: float = 3.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.num_shards < 1:
            raise ConfigError("[task] num_shards must be >= 1")
        if not 0 <= self.shard < self.num_shards:
            raise ConfigError(f"[task] shard must be in [0, num_shards) = [0, {self.num_shards})")
        if self.local_epochs < 1:
            raise ConfigError("[task] local_epochs must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("[task] lr must be a positive finite number")
        if self.batch_size < 1:
            raise ConfigError("[task] batch_size must be >= 1")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError("[task] epsilon must be a positive finite number")
        if not 0 < self.delta < 1:
            raise ConfigError("[task] delta must be in (0, 1)")


@dataclass(frozen=True, kw_only=True)
class SiloConfig:
    """A silo's configuration (``secagg silo --config FILE``).

    Attributes:
        silo: this silo's id; must be on the roster.
        coordinator: the coordinator's ``host:port``.
        federation: the federation id; must equal the roster's.
        roster: the signed roster file.
        consortium_public_key: the pinned Ed25519 consortium key (32 bytes).
        signing_key: this silo's Ed25519 roster private key.
        tls: CA, client certificate and key; ``None`` only with ``insecure_debug_no_tls``.
        state_dir: directory for the silo's local state (budget, model, round records).
        policy: what the silo insists on.
        task: the example task's parameters.
        mode: ``"masking"`` or ``"paillier"``: the aggregation protocol this silo speaks.
        audit_public_key: the coordinator's pinned Ed25519 audit key (32 bytes). When set, the silo checks after
            every round that the coordinator's signed ledger checkpoints only ever extend what it saw before
            (RFC 9162 consistency proofs), and keeps its own local ledger in ``state_dir``.
        insecure_debug_no_tls: connect without TLS. **Local debugging only**: refused unless the coordinator
            address is a loopback address.
        max_message_bytes: largest gRPC message sent or accepted.
        source: the file this configuration was loaded from, if any.
    """

    silo: str
    coordinator: str
    federation: str
    roster: Path
    consortium_public_key: bytes
    signing_key: Path
    tls: TLSPaths | None
    state_dir: Path
    task: TaskConfig
    policy: SiloPolicy = field(default_factory=SiloPolicy)
    audit_public_key: bytes | None = None
    mode: str = "masking"
    insecure_debug_no_tls: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_pinned_key(self.consortium_public_key)
        host, _ = _split_address("coordinator", self.coordinator, allow_port_zero=False)
        _check_tls_mode(self.tls, self.insecure_debug_no_tls, host, "coordinator")
        _check_message_bytes(self.max_message_bytes)
        _check_mode(self.mode)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SiloConfig:
        """Load, validate and cross-check a silo configuration file.

        Raises:
            ConfigError: naming the file and the key (see :meth:`ServeConfig.load`); also a silo id that is
                not on the roster.
        """
        file, doc = _read_toml(path)
        with _in_file(file):
            r = _Table(doc, file)
            silo = r.string("silo")
            coordinator = r.string("coordinator")
            federation = r.string("federation")
            roster_path = r.path("roster")
            pinned = r.hex_key("consortium_public_key")
            signing_key = r.path("signing_key")
            audit_public_key = r.hex_key("audit_public_key") if r.has("audit_public_key") else None
            mode = r.string("mode", "masking")
            state_dir = r.path("state_dir", must_exist=False)
            insecure = r.boolean("insecure_debug_no_tls", False)
            max_message_bytes = r.integer("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
            tls = _tls(r.optional_table("tls") if insecure else r.table("tls"))
            policy_table = r.optional_table("policy")
            policy = _policy(policy_table) if policy_table else SiloPolicy()

            roster = _verified_roster(roster_path, pinned, federation)
            if silo not in roster.members:
                raise ConfigError(f"silo: {silo!r} is not on the roster {roster_path}")
            task_table = r.optional_table("task")
            task = _task(
                task_table or _Table({}, file, "task"),
                default_shard=roster.index(silo) - 1,
                default_num_shards=len(roster.members),
            )
            r.finish()
            return cls(
                silo=silo,
                coordinator=coordinator,
                federation=federation,
                roster=roster_path,
                consortium_public_key=pinned,
                signing_key=signing_key,
                tls=tls,
                state_dir=state_dir,
                task=task,
                policy=policy,
                audit_public_key=audit_public_key,
                mode=mode,
                insecure_debug_no_tls=insecure,
                max_message_bytes=max_message_bytes,
                source=file,
            )

    def load_roster(self) -> Roster:
        """Read the roster file and verify it under the pinned consortium key.

        Raises:
            ConfigError: unreadable, malformed, wrongly signed, or for another federation.
        """
        return _verified_roster(self.roster, self.consortium_public_key, self.federation)


def write_demo_configs(
    consortium: ConsortiumPaths,
    out_dir: str | os.PathLike[str],
    *,
    rounds: int,
    clip: float = 1.0,
    bits: int = 16,
    collusion: int = 0,
    threshold: int | None = None,
    min_cohort: int = 3,
    model_size: int | None = None,
    initial_model: str | os.PathLike[str] | None = None,
    listen: str = "127.0.0.1:0",
    coordinator: str | None = None,
    deadlines: Deadlines | None = None,
    task: Mapping[str, int | float] | None = None,
    privacy: PrivacyConfig | None = None,
    silo_dp: SiloDPConfig | None = None,
    paillier_public_key: str | os.PathLike[str] | None = None,
) -> tuple[Path, list[Path]]:
    """Write working TOML configurations for a consortium's coordinator and every silo (for ``secagg demo``).

    Files: ``out_dir/serve.toml`` and ``out_dir/silo-<id>.toml``; the coordinator stores its database in
    ``out_dir/coordinator.sqlite`` and each silo its state in ``out_dir/state/<id>/``. Paths are written relative
    to ``out_dir``. Each file is loaded back before returning, so what is returned is known to load.

    Args:
        consortium: the consortium (from :func:`coordinator.pki.create_consortium`).
        out_dir: directory for the files (created if missing).
        rounds: number of rounds.
        clip, bits, collusion, threshold, min_cohort: the ``[rounds]`` table.
        model_size: model vector length (exactly one of ``model_size`` and ``initial_model``).
        initial_model: ``.npy`` float32 vector to start from.
        listen: the coordinator's bind address.
        coordinator: the address silos dial; defaults to ``listen``, which then must not use port 0.
        deadlines: per-stage deadlines (defaults when ``None``).
        task: extra ``[task]`` keys for every silo (``seed``, ``local_epochs``, ``lr``, ``batch_size``,
            ``epsilon``, ``delta``); ``shard`` and ``num_shards`` are set per silo.
        privacy: the coordinator's ``[privacy]`` table, if any.
        silo_dp: the coordinator's ``[silo_dp]`` table, if any.
        paillier_public_key: run in Paillier mode with this joint public key (``secagg pki paillier``).

    Returns:
        ``(serve_path, silo_paths)`` with silo paths in roster order.

    Raises:
        ValueError: inconsistent arguments (both or neither model option, no usable silo address).
        ConfigError: a file already exists, or a written file does not load (the message says why).
    """
    if (model_size is None) == (initial_model is None):
        raise ValueError("give exactly one of model_size and initial_model")
    if task and {"shard", "num_shards"} & set(task):
        raise ValueError("shard and num_shards are set per silo; do not pass them in task")
    if coordinator is None:
        _, port = _split_address("listen", listen, allow_port_zero=True)
        if port == 0:
            raise ValueError(
                "listen uses port 0: pass coordinator='host:port' for the silos to dial"
            )
        coordinator = listen
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pinned = consortium.consortium_public_key.read_text(encoding="utf-8").strip()

    def rel(path: str | os.PathLike[str]) -> str:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(out))

    rounds_table: dict[str, _Value] = {
        "count": rounds,
        "clip": float(clip),
        "bits": bits,
        "collusion": collusion,
        "min_cohort": min_cohort,
    }
    if threshold is not None:
        rounds_table["threshold"] = threshold
    model_table: dict[str, _Value] = (
        {"initial": rel(initial_model)} if initial_model is not None else {"size": model_size or 0}
    )
    d = deadlines or Deadlines()
    serve_doc: dict[str, _Value | dict[str, _Value]] = {
        "federation": consortium.federation,
        "listen": listen,
        "storage": "coordinator.sqlite",
        "roster": rel(consortium.roster),
        "consortium_public_key": pinned,
        "audit_key": rel(consortium.audit_key),
        "insecure_debug_no_tls": False,
        "revoked_certificates": [],
        "max_message_bytes": DEFAULT_MAX_MESSAGE_BYTES,
        "tls": {
            "ca": rel(consortium.ca_cert),
            "cert": rel(consortium.coordinator_cert),
            "key": rel(consortium.coordinator_key),
        },
        "model": model_table,
        "rounds": rounds_table,
        "deadlines": {name: float(getattr(d, name)) for name in _field_names(d)},
    }
    if privacy is not None:
        serve_doc["privacy"] = {
            "epsilon": privacy.epsilon,
            "delta": privacy.delta,
            "on_violation": privacy.on_violation,
            "require_attestation": privacy.require_attestation,
            "unit_of_privacy": privacy.unit_of_privacy,
        }
    if paillier_public_key is not None:
        serve_doc["mode"] = "paillier"
        serve_doc["paillier_public_key"] = rel(paillier_public_key)
    if silo_dp is not None:
        serve_doc["silo_dp"] = {name: getattr(silo_dp, name) for name in _field_names(silo_dp)}
    audit_public = consortium.audit_public_key.read_text(encoding="utf-8").strip()
    serve_path = out / "serve.toml"
    _write_new(serve_path, _dumps_toml(serve_doc, title="secagg coordinator (demo)"))

    silo_paths: list[Path] = []
    silos = list(consortium.silos.items())
    for index, (silo, paths) in enumerate(silos):
        silo_doc: dict[str, _Value | dict[str, _Value]] = {
            "silo": silo,
            "coordinator": coordinator,
            "federation": consortium.federation,
            "roster": rel(consortium.roster),
            "consortium_public_key": pinned,
            "signing_key": rel(paths.signing_key),
            "audit_public_key": audit_public,
            "mode": "masking" if paillier_public_key is None else "paillier",
            "state_dir": rel(out / "state" / silo),
            "tls": {
                "ca": rel(paths.ca_cert),
                "cert": rel(paths.cert),
                "key": rel(paths.key),
            },
            "policy": {"min_cohort": min_cohort, "max_collusion_assumed": collusion},
            "task": {"shard": index, "num_shards": len(silos), **(task or {})},
        }
        silo_path = out / f"silo-{silo}.toml"
        _write_new(silo_path, _dumps_toml(silo_doc, title=f"secagg silo {silo} (demo)"))
        silo_paths.append(silo_path)

    ServeConfig.load(serve_path)
    for silo_path in silo_paths:
        SiloConfig.load(silo_path)
    return serve_path, silo_paths


# --- strict TOML reading ---------------------------------------------------------------------------------


class _Table:
    """One TOML table being read: typed getters that record which keys were used, then :meth:`finish`."""

    def __init__(self, data: Mapping[str, object], file: Path, name: str = "") -> None:
        self._data = data
        self._file = file
        self._name = name
        self._seen: set[str] = set()

    def key(self, key: str) -> str:
        return f"{self._name}.{key}" if self._name else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.key(key)}: {message}")

    def _get(self, key: str) -> object | None:
        self._seen.add(key)
        return self._data.get(key)

    def _missing(self, key: str) -> ConfigError:
        return ConfigError(f"missing required key {self.key(key)!r}")

    def string(self, key: str, default: str | None = None) -> str:
        value = self._get(key)
        if value is None:
            if default is None:
                raise self._missing(key)
            return default
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_kind(value)}")
        if not value:
            raise self.error(key, "must not be empty")
        return value

    def optional_integer(self, key: str) -> int | None:
        value = self._get(key)
        if value is None:
            return None
        # bool is a subclass of int in Python; TOML true/false is never a count.
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, f"expected an integer, got {_kind(value)}")
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        value = self.optional_integer(key)
        if value is None:
            if default is None:
                raise self._missing(key)
            return default
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value = self._get(key)
        if value is None:
            if default is None:
                raise self._missing(key)
            return default
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.error(key, f"expected a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise self.error(key, "must be finite")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_kind(value)}")
        return value

    def string_list(self, key: str, default: Sequence[str]) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return tuple(default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected a list of strings, got {_kind(value)}")
        return tuple(value)

    def optional_path(self, key: str, *, must_exist: bool = True) -> Path | None:
        self._seen.add(key)
        if self._data.get(key) is None:
            return None
        path = Path(self.string(key))
        if not path.is_absolute():
            path = self._file.parent / path
        path = Path(os.path.abspath(path))
        if must_exist and not path.exists():
            raise self.error(key, f"{path} does not exist")
        return path

    def path(self, key: str, *, must_exist: bool = True) -> Path:
        path = self.optional_path(key, must_exist=must_exist)
        if path is None:
            raise self._missing(key)
        return path

    def has(self, key: str) -> bool:
        return key in self._data

    def hex_key(self, key: str) -> bytes:
        text = self.string(key)
        if len(text) != 64 or not _is_lower_hex(text.lower()):
            raise self.error(key, "expected a 32-byte Ed25519 public key as 64 hex digits")
        return bytes.fromhex(text)

    def optional_table(self, key: str) -> _Table | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_kind(value)}")
        return _Table(value, self._file, self.key(key))

    def table(self, key: str) -> _Table:
        table = self.optional_table(key)
        if table is None:
            raise ConfigError(f"missing required table [{self.key(key)}]")
        return table

    def finish(self) -> None:
        """Refuse keys nobody asked for: a typo must not silently fall back to a default."""
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, sorted(self._seen), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            allowed = ", ".join(sorted(self._seen))
            raise ConfigError(f"unknown key {self.key(key)!r}{hint}; allowed here: {allowed}")


@contextlib.contextmanager
def _in_file(file: Path) -> Iterator[None]:
    """Prefix every ConfigError raised inside with the file it concerns."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from exc


def _read_toml(path: str | os.PathLike[str]) -> tuple[Path, dict[str, object]]:
    file = Path(os.path.abspath(path))
    try:
        with file.open("rb") as handle:
            return file, tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {file}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc


def _tls(table: _Table | None) -> TLSPaths | None:
    if table is None:
        return None
    tls = TLSPaths(ca=table.path("ca"), cert=table.path("cert"), key=table.path("key"))
    table.finish()
    return tls


def _model(table: _Table) -> ModelConfig:
    size = table.optional_integer("size")
    initial = table.optional_path("initial")
    table.finish()
    if size is not None and initial is None:
        return ModelConfig(size=size)
    if size is not None or initial is None:
        raise ConfigError("[model]: give exactly one of 'size' and 'initial'")
    try:
        # mmap reads only the header: the size and dtype are known without loading the vector.
        vector = np.load(initial, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.initial: {initial} is not a .npy array") from exc
    if not isinstance(vector, np.ndarray) or vector.ndim != 1 or vector.dtype != np.float32:
        raise ConfigError(f"model.initial: {initial} must hold a 1-D float32 vector")
    return ModelConfig(size=int(vector.shape[0]), initial=initial)


def _rounds(table: _Table, n: int) -> RoundsConfig:
    collusion = table.integer("collusion", 0)
    threshold = table.optional_integer("threshold")
    rounds = RoundsConfig(
        count=table.integer("count"),
        threshold=minimum_threshold(n, collusion) if threshold is None else threshold,
        clip=table.number("clip"),
        collusion=collusion,
        min_cohort=table.integer("min_cohort", 3),
        bits=table.integer("bits", 16),
    )
    table.finish()
    rounds.check(n)
    return rounds


def _deadlines(table: _Table) -> Deadlines:
    defaults = Deadlines()
    deadlines = Deadlines(
        **{name: table.number(name, getattr(defaults, name)) for name in _field_names(defaults)}
    )
    table.finish()
    return deadlines


def _privacy(table: _Table) -> PrivacyConfig:
    defaults = PrivacyConfig(epsilon=1.0, delta=0.5)
    privacy = PrivacyConfig(
        epsilon=table.number("epsilon"),
        delta=table.number("delta"),
        on_violation=table.string("on_violation", defaults.on_violation),
        require_attestation=table.boolean("require_attestation", defaults.require_attestation),
        unit_of_privacy=table.string("unit_of_privacy", defaults.unit_of_privacy),
    )
    table.finish()
    return privacy


def _silo_dp(table: _Table) -> SiloDPConfig:
    defaults = SiloDPConfig(noise_multiplier=1.0)
    silo_dp = SiloDPConfig(
        noise_multiplier=table.number("noise_multiplier"),
        mechanism=table.string("mechanism", defaults.mechanism),
        bits=table.integer("bits", defaults.bits),
        dropouts_tolerated=table.integer("dropouts_tolerated", defaults.dropouts_tolerated),
        rotation=table.boolean("rotation", defaults.rotation),
        delta=table.number("delta", defaults.delta),
    )
    table.finish()
    return silo_dp


def _policy(table: _Table) -> SiloPolicy:
    policy = SiloPolicy(
        min_cohort=table.integer("min_cohort", 3),
        max_collusion_assumed=table.integer("max_collusion_assumed", 0),
        min_silo_dp_noise_multiplier=table.number("min_silo_dp_noise_multiplier", 0.0),
    )
    table.finish()
    return policy


def _task(table: _Table, *, default_shard: int, default_num_shards: int) -> TaskConfig:
    defaults = TaskConfig(shard=0, num_shards=1)
    task = TaskConfig(
        shard=table.integer("shard", default_shard),
        num_shards=table.integer("num_shards", default_num_shards),
        seed=table.integer("seed", defaults.seed),
        local_epochs=table.integer("local_epochs", defaults.local_epochs),
        lr=table.number("lr", defaults.lr),
        batch_size=table.integer("batch_size", defaults.batch_size),
        epsilon=table.number("epsilon", defaults.epsilon),
        delta=table.number("delta", defaults.delta),
    )
    table.finish()
    return task


def _verified_roster(path: Path, pinned: bytes, federation: str) -> Roster:
    try:
        roster = Roster.loads(path.read_text(encoding="utf-8"))
        roster.verify(pinned)
    except OSError as exc:
        raise ConfigError(f"roster: cannot read {path}: {exc.strerror}") from exc
    except InvalidSignature as exc:
        raise ConfigError(
            f"roster: {path} does not verify under consortium_public_key: {exc}"
        ) from exc
    except InvalidParameters as exc:
        raise ConfigError(f"roster: {path}: {exc}") from exc
    if roster.federation != federation:
        raise ConfigError(
            f"federation: {federation!r} does not match the roster's federation {roster.federation!r}"
        )
    return roster


# --- shared checks -------------------------------------------------------------------------------------


def _split_address(key: str, address: str, *, allow_port_zero: bool) -> tuple[str, int]:
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [::1]:port
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{key}: expected host:port (IPv6 as [addr]:port), got {address!r}")
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ConfigError(f"{key}: port {port} is out of range")
    return host, port


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_tls_mode(tls: TLSPaths | None, insecure: bool, host: str, key: str) -> None:
    if insecure and not _is_loopback(host):
        raise ConfigError(
            f"insecure_debug_no_tls: refused because {key} host {host!r} is not a loopback address "
            "(plaintext is for local debugging only)"
        )
    if tls is None and not insecure:
        raise ConfigError("missing required table [tls] (mutual TLS is mandatory)")


def _check_pinned_key(key: bytes) -> None:
    if len(key) != 32:
        raise ConfigError("consortium_public_key: must be a 32-byte Ed25519 public key")


def _check_mode(mode: str) -> None:
    if mode not in ("masking", "paillier"):
        raise ConfigError("mode must be 'masking' or 'paillier'")


def _check_message_bytes(value: int) -> None:
    if not _MIN_MESSAGE_BYTES <= value <= _MAX_MESSAGE_BYTES:
        raise ConfigError(
            f"max_message_bytes: must be between {_MIN_MESSAGE_BYTES} and {_MAX_MESSAGE_BYTES}"
        )


def _is_lower_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _kind(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    names.update({list: "a list", dict: "a table"})
    return names.get(type(value), type(value).__name__)


def _field_names(obj: object) -> list[str]:
    return list(obj.__dataclass_fields__)  # type: ignore[attr-defined]


# --- TOML writing (tomllib only reads) -----------------------------------------------------------------

_Value = str | int | float | bool | list[str]


def _dumps_toml(doc: Mapping[str, _Value | Mapping[str, _Value]], *, title: str) -> str:
    lines = [f"# {title}: written by secagg; paths are relative to this file.", ""]
    tables = {k: v for k, v in doc.items() if isinstance(v, Mapping)}
    for key, value in doc.items():
        if not isinstance(value, Mapping):
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables.items():
        lines += ["", f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: _Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # Python's repr is valid TOML for every float, including inf and nan
    if isinstance(value, str):
        # A JSON string without non-ASCII escapes is a valid TOML basic string, except for DEL.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _write_new(path: Path, text: str) -> None:
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError as exc:
        raise ConfigError(f"{path} already exists: refusing to overwrite it") from exc
