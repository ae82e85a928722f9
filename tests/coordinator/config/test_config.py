"""Configuration files: demo configs round-trip, and every invalid setting fails with a message naming it."""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.common import DEFAULT_MAX_MESSAGE_BYTES
from coordinator.config import (
    Deadlines,
    MaskingDeadlines,
    ModelConfig,
    PaillierDeadlines,
    PrivacyConfig,
    RoundsConfig,
    ServeConfig,
    SiloConfig,
    SiloPolicy,
    TaskConfig,
    TLSPaths,
    write_demo_configs,
)
from coordinator.errors import ConfigError
from coordinator.pki import ConsortiumPaths, certificate_fingerprint, create_consortium
from secagg import minimum_threshold
from tests.coordinator.conftest import FEDERATION, SILOS

Doc = dict[str, Any]


def _rewrite(path: Path, edit: Callable[[Doc], None]) -> Path:
    """Parse ``path``, apply ``edit`` to the document, and write it back."""
    doc = tomllib.loads(path.read_text())
    edit(doc)
    path.write_text(tomli_w.dumps(doc))
    return path


def _pinned(consortium: ConsortiumPaths) -> bytes:
    return bytes.fromhex(consortium.consortium_public_key.read_text().strip())


# --- round trip ------------------------------------------------------------------------------------------


def test_demo_configs_round_trip(
    consortium: ConsortiumPaths, demo_configs: tuple[Path, list[Path]]
) -> None:
    serve_path, silo_paths = demo_configs
    serve = ServeConfig.load(serve_path)
    assert serve == ServeConfig(
        federation=FEDERATION,
        listen="127.0.0.1:0",
        storage=serve_path.parent / "coordinator.sqlite",
        roster=consortium.roster,
        consortium_public_key=_pinned(consortium),
        tls=TLSPaths(
            ca=consortium.ca_cert, cert=consortium.coordinator_cert, key=consortium.coordinator_key
        ),
        audit_key=consortium.audit_key,
        model=ModelConfig(size=10, init="zeros"),
        rounds=RoundsConfig(count=3, threshold=minimum_threshold(3, 0), clip=1.0),
    )
    assert serve.source == serve_path
    assert serve.deadlines == Deadlines()
    assert serve.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert serve.load_roster().federation == FEDERATION

    assert [p.name for p in silo_paths] == [f"silo-{s}.toml" for s in SILOS]
    for shard, (silo, path) in enumerate(zip(SILOS, silo_paths, strict=True)):
        config = SiloConfig.load(path)
        paths = consortium.silos[silo]
        assert config == SiloConfig(
            silo=silo,
            coordinator="127.0.0.1:50051",
            federation=FEDERATION,
            roster=consortium.roster,
            consortium_public_key=_pinned(consortium),
            signing_key=paths.signing_key,
            tls=TLSPaths(ca=paths.ca_cert, cert=paths.cert, key=paths.key),
            state_dir=path.parent / "state" / silo,
            task=TaskConfig(shard=shard, num_shards=3),
            policy=SiloPolicy(min_cohort=3, max_collusion_assumed=0),
            audit_public_key=bytes.fromhex(
                consortium.audit_public_key.read_text(encoding="utf-8").strip()
            ),
        )
        assert config.load_roster().index(silo) == shard + 1


def test_demo_configs_carry_every_parameter(consortium: ConsortiumPaths, tmp_path: Path) -> None:
    initial = tmp_path / "init.npy"
    np.save(initial, np.zeros(7, dtype=np.float32))
    deadlines = Deadlines(
        masking=MaskingDeadlines(
            advertise=1.5, share_keys=2, masked_input=3, consistency=4, unmask=5
        ),
        paillier=PaillierDeadlines(collect=6, decrypt=7.5),
    )
    serve_path, silo_paths = write_demo_configs(
        consortium,
        tmp_path / "out",
        rounds=5,
        clip=0.5,
        bits=12,
        collusion=1,
        threshold=3,
        min_cohort=3,
        initial_model=initial,
        listen="127.0.0.1:7000",
        deadlines=deadlines,
        task={"epsilon": 2.5, "delta": 1e-6, "lr": 0.01, "local_epochs": 2, "seed": 9},
    )
    serve = ServeConfig.load(serve_path)
    assert serve.rounds == RoundsConfig(
        count=5, threshold=3, clip=0.5, collusion=1, min_cohort=3, bits=12
    )
    assert serve.model == ModelConfig(size=7, initial_model=initial)
    assert serve.deadlines == deadlines
    silo = SiloConfig.load(silo_paths[2])
    assert silo.coordinator == "127.0.0.1:7000"
    assert silo.policy == SiloPolicy(min_cohort=3, max_collusion_assumed=1)
    assert silo.task == TaskConfig(
        shard=2, num_shards=3, seed=9, local_epochs=2, lr=0.01, epsilon=2.5, delta=1e-6
    )


def test_configs_load_from_any_working_directory(
    demo_configs: tuple[Path, list[Path]],
    consortium: ConsortiumPaths,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serve_path, silo_paths = demo_configs
    monkeypatch.chdir(consortium.root / "silos")
    relative = Path(os.path.relpath(serve_path))
    assert not relative.is_absolute()
    serve = ServeConfig.load(relative)
    assert serve.roster == consortium.roster  # resolved against the file's directory, not the cwd
    assert "roster.json" in serve_path.read_text()
    assert str(consortium.root) not in serve_path.read_text()  # written relative: relocatable
    assert SiloConfig.load(silo_paths[0]).signing_key.is_absolute()


def test_write_demo_configs_refuses_to_overwrite_and_bad_arguments(
    consortium: ConsortiumPaths, demo_configs: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    serve_path, _ = demo_configs
    before = serve_path.read_text()
    with pytest.raises(ConfigError, match="already exists"):
        write_demo_configs(
            consortium, serve_path.parent, rounds=1, model_size=3, coordinator="127.0.0.1:1"
        )
    assert serve_path.read_text() == before
    with pytest.raises(
        ValueError, match="exactly one of model_size, initial_model and model_factory"
    ):
        write_demo_configs(consortium, tmp_path / "a", rounds=1, coordinator="127.0.0.1:1")
    with pytest.raises(ValueError, match="port 0"):
        write_demo_configs(consortium, tmp_path / "b", rounds=1, model_size=3)
    with pytest.raises(ValueError, match="set per silo"):
        write_demo_configs(
            consortium,
            tmp_path / "c",
            rounds=1,
            model_size=3,
            listen="127.0.0.1:1",
            task={"shard": 1},
        )
    with pytest.raises(ConfigError, match=r"\[rounds\]: threshold 1 is unsafe"):
        write_demo_configs(
            consortium, tmp_path / "d", rounds=1, model_size=3, listen="127.0.0.1:1", threshold=1
        )


def test_chunks_stay_below_the_message_limit(demo_configs: tuple[Path, list[Path]]) -> None:
    serve = ServeConfig.load(demo_configs[0])
    assert 0 < serve.chunk_bytes < serve.max_message_bytes
    assert serve.chunk_bytes % 4 == 0  # whole uint32 coordinates


def test_insecure_debug_mode_is_loopback_only(demo_configs: tuple[Path, list[Path]]) -> None:
    serve_path, silo_paths = demo_configs

    def insecure(doc: Doc) -> None:
        doc["insecure_debug_no_tls"] = True
        del doc["tls"]

    serve = ServeConfig.load(_rewrite(serve_path, insecure))
    assert serve.insecure_debug_no_tls
    assert serve.tls is None
    silo = SiloConfig.load(_rewrite(silo_paths[0], insecure))
    assert silo.tls is None
    _rewrite(serve_path, lambda d: d.update(listen="[::1]:9000"))
    assert ServeConfig.load(serve_path).listen == "[::1]:9000"
    _rewrite(serve_path, lambda d: d.update(listen="0.0.0.0:9000"))
    with pytest.raises(ConfigError, match="insecure_debug_no_tls: refused because listen host"):
        ServeConfig.load(serve_path)
    _rewrite(silo_paths[0], lambda d: d.update(coordinator="coordinator.example.org:443"))
    with pytest.raises(ConfigError, match="not a loopback address"):
        SiloConfig.load(silo_paths[0])
    replicas = ["127.0.0.1:7000", "localhost:7001"]
    _rewrite(silo_paths[0], lambda d: d.update(coordinator=replicas))
    assert SiloConfig.load(silo_paths[0]).coordinators == tuple(replicas)
    _rewrite(silo_paths[0], lambda d: d.update(coordinator=["127.0.0.1:7000", "example.org:443"]))
    with pytest.raises(ConfigError, match="not a loopback address"):
        SiloConfig.load(silo_paths[0])


# --- every validation error names the file and the key -----------------------------------------------------


def _set(table: str | None, key: str, value: object) -> Callable[[Doc], None]:
    """Set ``key`` in ``table`` (dotted for a nested table, ``None`` for the top level), creating tables."""

    def edit(doc: Doc) -> None:
        target = doc
        for name in table.split(".") if table else []:
            target = target.setdefault(name, {})
        target[key] = value

    return edit


def _delete(table: str | None, key: str) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        del (doc[table] if table else doc)[key]

    return edit


SERVE_ERRORS: list[tuple[str, Callable[[Doc], None], str]] = [
    ("unknown key", _set(None, "thresold", 2), r"unknown key 'thresold'"),
    (
        "typo in table",
        _set("rounds", "treshold", 2),
        r"unknown key 'rounds.treshold' \(did you mean 'threshold'\?\)",
    ),
    ("unknown table", _set("extra", "x", 1), r"unknown key 'extra'"),
    ("missing key", _delete(None, "federation"), r"missing required key 'federation'"),
    ("missing table", _delete(None, "tls"), r"missing required table \[tls\]"),
    ("missing tls file", _set("tls", "cert", "nope.pem"), r"tls.cert: .*nope.pem does not exist"),
    ("string type", _set(None, "listen", 5), r"listen: expected a string, got an integer"),
    (
        "bool is no int",
        _set("rounds", "bits", True),
        r"rounds.bits: expected an integer, got a boolean",
    ),
    (
        "float is no int",
        _set("rounds", "count", 2.0),
        r"rounds.count: expected an integer, got a number",
    ),
    ("number type", _set("rounds", "clip", "1.0"), r"rounds.clip: expected a number, got a string"),
    ("infinite clip", _set("rounds", "clip", float("inf")), r"rounds.clip: must be finite"),
    ("negative clip", _set("rounds", "clip", -1.0), r"\[rounds\] clip must be a positive"),
    (
        "bool type",
        _set(None, "insecure_debug_no_tls", "no"),
        r"insecure_debug_no_tls: expected true or false",
    ),
    ("table type", _set(None, "model", 3), r"model: expected a table, got an integer"),
    (
        "unsafe threshold",
        _set("rounds", "threshold", 1),
        r"threshold 1 is unsafe for n=3, c=0: need t > \(n \+ c\)/2",
    ),
    ("threshold > n", _set("rounds", "threshold", 4), r"threshold 4 exceeds the 3 silos"),
    (
        "collusion too large",
        _set("rounds", "collusion", 3),
        r"collusion bound c must be in \[0, n\)",
    ),
    ("min_cohort > n", _set("rounds", "min_cohort", 4), r"min_cohort 4 exceeds the 3 silos"),
    ("too many bits", _set("rounds", "bits", 31), r"\[rounds\] bits/clip: .*ring has 32"),
    ("zero rounds", _set("rounds", "count", 0), r"\[rounds\] count must be >= 1"),
    (
        "old initial key",
        _set("model", "initial", "x.npy"),
        r"model.initial: is now called initial_model",
    ),
    (
        "two model sources",
        _set("model", "initial_model", "x.npy"),
        r"\[model\]: both initial_model and init given: say how the model starts",
    ),
    (
        "only a size",
        _delete("model", "init"),
        r"\[model\]: only a size given: say how the model starts, with exactly one of initial_model = "
        r'"FILE.npy" .*, factory = "pkg.module:make_model" .* or init = "zeros" with size = N$',
    ),
    ("zeros without a size", _delete("model", "size"), r'init = "zeros" needs size = N'),
    ("zero size", _set("model", "size", 0), r"\[model\] size must be >= 1"),
    (
        "negative deadline",
        _set("deadlines.masking", "unmask", -1),
        r"\[deadlines.masking\] unmask must be a positive",
    ),
    (
        "zero paillier deadline",
        _set("deadlines.paillier", "collect", 0),
        r"\[deadlines.paillier\] collect must be a positive",
    ),
    (
        "infinite deadline",
        _set("deadlines.paillier", "decrypt", float("inf")),
        r"deadlines.paillier.decrypt: must be finite",
    ),
    (
        "deadline type",
        _set("deadlines.masking", "advertise", "30s"),
        r"deadlines.masking.advertise: expected a number, got a string",
    ),
    (
        "flat deadline of before",
        _set("deadlines", "advertise", 5),
        r"deadlines.advertise: .*move it under \[deadlines.masking\]",
    ),
    (
        "round_start is gone",
        _set("deadlines", "round_start", 600),
        r"deadlines.round_start: is no longer used",
    ),
    (
        "stage of the other mode",
        _set("deadlines.masking", "collect", 5),
        r"unknown key 'deadlines.masking.collect'; allowed here: advertise, consistency, masked_input, "
        r"share_keys, unmask$",
    ),
    (
        "unknown mode",
        _set(None, "mode", "plain"),
        r"mode: must be 'masking' or 'paillier'",
    ),
    (
        "paillier without its key",
        _set(None, "mode", "paillier"),
        r"paillier_public_key: is required in Paillier mode and only there",
    ),
    (
        "privacy without its ceiling",
        _set("privacy", "on_violation", "flag"),
        r"missing required key 'privacy.epsilon'",
    ),
    (
        "privacy policy",
        lambda doc: doc.update(privacy={"epsilon": 1.0, "delta": 1e-5, "on_violation": "ignore"}),
        r"\[privacy\] on_violation must be 'refuse' or 'flag'",
    ),
    (
        "silo_dp in paillier mode",
        lambda doc: doc.update(
            mode="paillier", paillier_public_key=doc["roster"], silo_dp={"noise_multiplier": 1.0}
        ),
        r"^\S+: \[silo_dp\] is available in masking mode only$",
    ),
    ("bad address", _set(None, "listen", "localhost"), r"listen: expected host:port"),
    ("bad port", _set(None, "listen", "127.0.0.1:70000"), r"listen: port 70000 is out of range"),
    (
        "bad pinned key",
        _set(None, "consortium_public_key", "abcd"),
        r"consortium_public_key: expected a 32-byte Ed25519",
    ),
    (
        "wrong pinned key",
        _set(None, "consortium_public_key", "11" * 32),
        r"roster: .*does not verify under consortium_public_key",
    ),
    (
        "wrong federation",
        _set(None, "federation", "otherfed"),
        r"federation: 'otherfed' does not match the roster's federation 'testfed'",
    ),
    (
        "bad revocation",
        _set(None, "revoked_certificates", ["abc"]),
        r"revoked_certificates: each entry must be a SHA-256",
    ),
    (
        "revocation type",
        _set(None, "revoked_certificates", "abc"),
        r"revoked_certificates: expected a list of strings",
    ),
    (
        "tiny messages",
        _set(None, "max_message_bytes", 1000),
        r"max_message_bytes: must be between 65536",
    ),
]


@pytest.mark.parametrize(
    ("edit", "message"), [(e, m) for _, e, m in SERVE_ERRORS], ids=[i for i, _, _ in SERVE_ERRORS]
)
def test_serve_config_errors(
    demo_configs: tuple[Path, list[Path]], edit: Callable[[Doc], None], message: str
) -> None:
    serve_path = _rewrite(demo_configs[0], edit)
    with pytest.raises(ConfigError, match=message) as error:
        ServeConfig.load(serve_path)
    _assert_one_line_about(error.value, serve_path)


def _assert_one_line_about(error: ConfigError, path: Path) -> None:
    """Our message: the file first, one line, none of pydantic's wording or links."""
    text = str(error)
    assert text.startswith(f"{path}: ")
    assert "\n" not in text
    assert "pydantic" not in text
    assert "Input should" not in text
    assert not isinstance(error.__cause__, ValueError)  # pydantic's ValidationError is not chained


SILO_ERRORS: list[tuple[str, Callable[[Doc], None], str]] = [
    ("not on roster", _set(None, "silo", "silo-z"), r"silo: 'silo-z' is not on the roster"),
    ("port zero", _set(None, "coordinator", "127.0.0.1:0"), r"coordinator: port 0 is out of range"),
    (
        "replica port zero",
        _set(None, "coordinator", ["127.0.0.1:7000", "127.0.0.1:0"]),
        r"coordinator: port 0 is out of range",
    ),
    (
        "replica twice",
        _set(None, "coordinator", ["127.0.0.1:7000", "127.0.0.1:7000"]),
        r"coordinator: lists an address twice",
    ),
    ("no replica", _set(None, "coordinator", []), r"coordinator"),
    (
        "unknown policy key",
        _set("policy", "max_colusion_assumed", 1),
        r"unknown key 'policy.max_colusion_assumed' \(did you mean 'max_collusion_assumed'\?\)",
    ),
    ("policy cohort", _set("policy", "min_cohort", 1), r"\[policy\] min_cohort must be >= 2"),
    (
        "negative collusion",
        _set("policy", "max_collusion_assumed", -1),
        r"\[policy\] max_collusion_assumed must be >= 0",
    ),
    (
        "negative silo-level dropouts",
        _set("policy", "min_silo_dp_dropouts_tolerated", -1),
        r"\[policy\] min_silo_dp_dropouts_tolerated must be >= 0",
    ),
    (
        "silo-level epsilon zero",
        _set("policy", "max_silo_level_epsilon", 0),
        r"\[policy\] max_silo_level_epsilon must be > 0",
    ),
    (
        "no silo-level release",
        _set("policy", "max_silo_level_releases", 0),
        r"\[policy\] max_silo_level_releases must be >= 1",
    ),
    (
        "shard range",
        _set("task", "shard", 3),
        r"\[task\] shard must be in \[0, num_shards\) = \[0, 3\)",
    ),
    (
        "epsilon zero",
        _set("task", "epsilon", 0),
        r"\[task\] epsilon must be a positive finite number",
    ),
    ("delta one", _set("task", "delta", 1.0), r"\[task\] delta must be in \(0, 1\)"),
    ("batch size", _set("task", "batch_size", 0), r"\[task\] batch_size must be >= 1"),
    ("lr type", _set("task", "lr", "fast"), r"task.lr: expected a number, got a string"),
    (
        "missing signing key",
        _set(None, "signing_key", "gone.key"),
        r"signing_key: .*gone.key does not exist",
    ),
    ("missing state_dir key", _delete(None, "state_dir"), r"missing required key 'state_dir'"),
    (
        "bad audit key",
        _set(None, "audit_public_key", "zz" * 32),
        r"audit_public_key: expected a 32-byte Ed25519 public key as 64 hex digits",
    ),
    ("empty silo id", _set(None, "silo", ""), r"silo: must not be empty"),
    ("task table type", _set(None, "task", [1]), r"task: expected a table, got a list"),
]


@pytest.mark.parametrize(
    ("edit", "message"), [(e, m) for _, e, m in SILO_ERRORS], ids=[i for i, _, _ in SILO_ERRORS]
)
def test_silo_config_errors(
    demo_configs: tuple[Path, list[Path]], edit: Callable[[Doc], None], message: str
) -> None:
    silo_path = _rewrite(demo_configs[1][0], edit)
    with pytest.raises(ConfigError, match=message) as error:
        SiloConfig.load(silo_path)
    _assert_one_line_about(error.value, silo_path)


def test_the_silo_level_budget_keys_load_and_default_to_no_limit(
    demo_configs: tuple[Path, list[Path]],
) -> None:
    assert SiloConfig.load(demo_configs[1][0]).policy.max_silo_level_epsilon is None
    edits = [
        _set("policy", "min_silo_dp_dropouts_tolerated", 1),
        _set("policy", "max_silo_level_epsilon", 4.5),
        _set("policy", "max_silo_level_releases", 10),
    ]
    path = demo_configs[1][0]
    for edit in edits:
        path = _rewrite(path, edit)
    policy = SiloConfig.load(path).policy
    assert (
        policy.min_silo_dp_dropouts_tolerated,
        policy.max_silo_level_epsilon,
        policy.max_silo_level_releases,
    ) == (1, 4.5, 10)


def test_silo_task_defaults_come_from_the_roster(demo_configs: tuple[Path, list[Path]]) -> None:
    silo_path = _rewrite(demo_configs[1][1], _delete(None, "task"))
    assert SiloConfig.load(silo_path).task == TaskConfig(shard=1, num_shards=3)


def test_revoked_certificates_are_normalised(
    consortium: ConsortiumPaths, demo_configs: tuple[Path, list[Path]]
) -> None:
    fingerprint = certificate_fingerprint(consortium.silos["silo-b"].cert.read_bytes())
    serve_path = _rewrite(
        demo_configs[0], _set(None, "revoked_certificates", [fingerprint.upper()])
    )
    assert ServeConfig.load(serve_path).revoked_certificates == frozenset({fingerprint})


def test_a_tampered_roster_is_refused(
    consortium: ConsortiumPaths, demo_configs: tuple[Path, list[Path]]
) -> None:
    # Swap two members' keys: same JSON shape, broken consortium signature.
    text = consortium.roster.read_text()
    key_a = consortium.roster.read_text().split('"silo-a": "')[1][:64]
    key_b = consortium.roster.read_text().split('"silo-b": "')[1][:64]
    consortium.roster.write_text(text.replace(key_a, "X").replace(key_b, key_a).replace("X", key_b))
    with pytest.raises(ConfigError, match="does not verify under consortium_public_key"):
        ServeConfig.load(demo_configs[0])
    consortium.roster.write_text("{not json")
    with pytest.raises(ConfigError, match="malformed roster"):
        SiloConfig.load(demo_configs[1][0])


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros(4, dtype=np.float64), "1-D float32"),
        (np.zeros((2, 2), dtype=np.float32), "1-D float32"),
        (None, "is not a .npy array"),
    ],
)
def test_initial_model_must_be_a_float32_vector(
    demo_configs: tuple[Path, list[Path]], tmp_path: Path, array: Any, message: str
) -> None:
    initial = tmp_path / "initial.npy"
    if array is None:
        initial.write_bytes(b"not numpy")
    else:
        np.save(initial, array)

    def edit(doc: Doc) -> None:
        doc["model"] = {"initial_model": str(initial)}

    with pytest.raises(ConfigError, match=message):
        ServeConfig.load(_rewrite(demo_configs[0], edit))


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        ServeConfig.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("federation = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        SiloConfig.load(bad)


def test_models_validate_without_a_file() -> None:
    with pytest.raises(ConfigError, match=r"task\.epsilon: must be finite"):
        TaskConfig(shard=0, num_shards=1, epsilon=float("nan"))
    with pytest.raises(ConfigError, match=r"\[deadlines.masking\] advertise must be a positive"):
        MaskingDeadlines(advertise=0)
    with pytest.raises(ConfigError, match=r"\[deadlines.masking\] unmask must be a positive"):
        Deadlines(masking={"unmask": -1})  # a nested table names its full key
    with pytest.raises(ConfigError, match=r"deadlines.advertise: .*\[deadlines.masking\]"):
        Deadlines(advertise=5)
    with pytest.raises(
        ConfigError, match=r"\[task\] shard must be in \[0, num_shards\) = \[0, 2\)"
    ):
        TaskConfig(shard=2, num_shards=2)
    with pytest.raises(ConfigError, match=r"\[privacy\] delta must be in \(0, 1\)"):
        PrivacyConfig(epsilon=1.0, delta=1.0)
    with pytest.raises(
        ConfigError, match=r"unknown key 'policy.min_cohrt' \(did you mean 'min_cohort'\?\)"
    ):
        SiloPolicy(min_cohrt=3)
    with pytest.raises(ConfigError, match=r"\[rounds\]: threshold 2 is unsafe for n=3, c=1"):
        RoundsConfig(count=1, threshold=2, clip=1.0, collusion=1).check(3)


def test_models_are_frozen_and_loaded_ones_equal_built_ones(
    demo_configs: tuple[Path, list[Path]],
) -> None:
    deadlines = Deadlines()
    with pytest.raises(ValueError, match="frozen"):
        deadlines.masking = MaskingDeadlines(advertise=1)  # type: ignore[misc]
    assert deadlines.paillier == PaillierDeadlines(collect=150, decrypt=60)
    first, second = (ServeConfig.load(demo_configs[0]) for _ in range(2))
    assert first == second
    assert hash(first) == hash(second)
    assert first.model_copy(update={"listen": "127.0.0.1:1"}) != first


# --- the TOML writer, through the files write_demo_configs writes ---------------------------------------------


@pytest.fixture(scope="module")
def writer_consortium(tmp_path_factory: pytest.TempPathFactory) -> ConsortiumPaths:
    """One consortium for every example of the writer's properties (function fixtures do not mix with given)."""
    return create_consortium(
        tmp_path_factory.mktemp("writer") / "consortium", federation=FEDERATION, silos=SILOS
    )


def _written_and_loaded(consortium: ConsortiumPaths, **options: Any) -> ServeConfig:
    with tempfile.TemporaryDirectory(dir=consortium.root) as out:
        serve_path, _ = write_demo_configs(
            consortium, out, model_size=3, coordinator="127.0.0.1:1", **{"rounds": 1, **options}
        )
        assert serve_path.read_text().startswith("# secagg coordinator (demo): written by secagg")
        return ServeConfig.load(serve_path)


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1).filter(str.strip))
def test_any_string_survives_the_toml_writer(writer_consortium: ConsortiumPaths, text: str) -> None:
    privacy = PrivacyConfig(epsilon=1.0, delta=1e-5, unit_of_privacy=text)
    assert _written_and_loaded(writer_consortium, privacy=privacy).privacy == privacy


@settings(max_examples=40, deadline=None)
@given(
    st.floats(min_value=0, exclude_min=True, allow_infinity=False),
    st.floats(min_value=0, max_value=1, exclude_min=True, exclude_max=True),
    st.integers(1, 2**63 - 1),
)
def test_any_number_survives_the_toml_writer(
    writer_consortium: ConsortiumPaths, epsilon: float, delta: float, rounds: int
) -> None:
    privacy = PrivacyConfig(epsilon=epsilon, delta=delta)
    loaded = _written_and_loaded(writer_consortium, privacy=privacy, rounds=rounds)
    assert loaded.privacy == privacy
    assert loaded.rounds.count == rounds


def test_a_governed_federation_must_set_its_threshold(
    consortium: ConsortiumPaths, demo_configs: tuple[Path, list[Path]]
) -> None:
    """With ``[governance]`` the roster changes while the federation runs: no default from its size at start-up."""
    serve_path, _ = demo_configs
    assert ServeConfig.load(serve_path).rounds.threshold == minimum_threshold(
        3, 0
    )  # ungoverned: defaulted
    pinned = consortium.coordinator_cert.parent

    def governed(doc: Doc) -> None:
        doc["governance"] = {
            "roster_version": str(pinned / "roster-version.json"),
            "file": str(pinned / "governance.json"),
        }

    with pytest.raises(
        ConfigError, match=r"\[governance\] needs an explicit \[rounds\] threshold"
    ) as err:
        ServeConfig.load(_rewrite(serve_path, governed))
    assert "\n" not in str(err.value), str(err.value)
    _rewrite(serve_path, lambda doc: doc["rounds"].update(threshold=3))
    assert ServeConfig.load(serve_path).rounds.threshold == 3
