"""TOML configuration of ``secagg serve`` and ``secagg silo``: strict loading into frozen pydantic models.

Every key is type-checked (no coercion: ``"1"`` is not a number, ``true`` not a count), unknown keys are refused
(a typo must not silently fall back to a default), relative paths are resolved against the configuration
file's directory, and every error is a one-line :class:`~coordinator.errors.ConfigError` naming the file and
the key. Loading also reads the roster, verifies it with the pinned consortium key and checks the threshold
rules against its size, so a configuration that loads is one a round can run with. :func:`json_schema` gives
the files' JSON Schema; ``docs/configuration.md`` is generated from it (``make config-docs``).

Modules: :mod:`~coordinator.config.serve` (``serve.toml``), :mod:`~coordinator.config.silo` (``silo.toml``),
:mod:`~coordinator.config.base` (what both share), :mod:`~coordinator.config.errors` (the messages),
:mod:`~coordinator.config.schema`, :mod:`~coordinator.config.demo` (:func:`write_demo_configs`) and
:mod:`~coordinator.config.template` (:func:`write_config_template`, ``secagg config init``).

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

from coordinator.common import DEFAULT_MAX_MESSAGE_BYTES, chunk_words
from coordinator.config.base import TLSPaths
from coordinator.config.demo import write_demo_configs
from coordinator.config.schema import json_schema
from coordinator.config.serve import (
    Deadlines,
    LimitsConfig,
    MaskingConfig,
    MaskingDeadlines,
    MetricsConfig,
    ModelConfig,
    PaillierDeadlines,
    PrivacyConfig,
    RoundsConfig,
    ServeConfig,
    SiloDPConfig,
    StorageConfig,
)
from coordinator.config.silo import SiloConfig, SiloPolicy, TaskConfig
from coordinator.config.template import config_template, write_config_template

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Deadlines",
    "LimitsConfig",
    "MaskingConfig",
    "MaskingDeadlines",
    "MetricsConfig",
    "ModelConfig",
    "PaillierDeadlines",
    "PrivacyConfig",
    "RoundsConfig",
    "ServeConfig",
    "SiloConfig",
    "SiloDPConfig",
    "SiloPolicy",
    "StorageConfig",
    "TLSPaths",
    "TaskConfig",
    "chunk_words",
    "config_template",
    "json_schema",
    "write_config_template",
    "write_demo_configs",
]
