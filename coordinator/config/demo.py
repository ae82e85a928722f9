"""Working ``serve.toml`` and ``silo-<id>.toml`` files for a development consortium (``secagg demo``, tests)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from coordinator.common import DEFAULT_MAX_MESSAGE_BYTES
from coordinator.config.base import split_address
from coordinator.config.serve import Deadlines, PrivacyConfig, ServeConfig, SiloDPConfig
from coordinator.config.silo import SiloConfig
from coordinator.errors import ConfigError

if TYPE_CHECKING:  # config and pki are peers (DESIGN 3): a type only, no import at run time
    from coordinator.pki import ConsortiumPaths

__all__ = ["write_demo_configs"]


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
    model_factory: str | None = None,
    listen: str = "127.0.0.1:0",
    coordinator: str | None = None,
    deadlines: Deadlines | None = None,
    task: Mapping[str, int | float] | None = None,
    task_entry: str | None = None,
    privacy: PrivacyConfig | None = None,
    silo_dp: SiloDPConfig | None = None,
    paillier_public_key: str | os.PathLike[str] | None = None,
    storage: str | None = None,
    metrics: str | None = None,
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
        model_size: start from zeros (``init = "zeros"``) with this many coordinates; exactly one of
            ``model_size``, ``initial_model`` and ``model_factory``.
        initial_model: ``.npy`` float32 vector to start from.
        model_factory: ``"pkg.module:make_model"`` the coordinator calls for round 0's model.
        listen: the coordinator's bind address.
        coordinator: the address silos dial; defaults to ``listen``, which then must not use port 0.
        deadlines: per-stage deadlines of both modes (defaults when ``None``).
        task: extra ``[task]`` keys for every silo (``seed``, ``local_epochs``, ``lr``, ``batch_size``,
            ``epsilon``, ``delta``); ``shard`` and ``num_shards`` are set per silo.
        task_entry: every silo runs this ``[task] entry`` instead of the example task (then no ``task``).
        privacy: the coordinator's ``[privacy]`` table, if any.
        silo_dp: the coordinator's ``[silo_dp]`` table, if any.
        paillier_public_key: run in Paillier mode with this joint public key (``secagg pki paillier``).
        storage: the coordinator's ``[storage] url`` (a ``postgresql://`` URL); ``coordinator.sqlite`` when ``None``.
        metrics: the coordinator's ``[metrics] listen`` address (``host:port``); no metrics listener when ``None``.

    Returns:
        ``(serve_path, silo_paths)`` with silo paths in roster order.

    Raises:
        ValueError: inconsistent arguments (both or neither model option, no usable silo address).
        ConfigError: a file already exists, or a written file does not load (the message says why).
    """
    if sum(x is not None for x in (model_size, initial_model, model_factory)) != 1:
        raise ValueError("give exactly one of model_size, initial_model and model_factory")
    if task and task_entry is not None:
        raise ValueError("a task entry point gives its own settings; do not pass task with it")
    if task and {"shard", "num_shards"} & set(task):
        raise ValueError("shard and num_shards are set per silo; do not pass them in task")
    if coordinator is None:
        try:
            _, port = split_address(listen, allow_port_zero=True)
        except ValueError as exc:
            raise ValueError(f"listen: {exc}") from None
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

    rounds_table: dict[str, Any] = {
        "count": rounds,
        "clip": float(clip),
        "bits": bits,
        "collusion": collusion,
        "min_cohort": min_cohort,
    }
    if threshold is not None:
        rounds_table["threshold"] = threshold
    serve_doc: dict[str, Any] = {
        "federation": consortium.federation,
        "listen": listen,
        "storage": {"url": storage} if storage is not None else "coordinator.sqlite",
        "roster": rel(consortium.roster),
        "consortium_public_key": pinned,
        "audit_key": rel(consortium.audit_key),
        "insecure_debug_no_tls": False,
        "revoked_certificates": [],
        "max_message_bytes": DEFAULT_MAX_MESSAGE_BYTES,
        **({"metrics": {"listen": metrics}} if metrics is not None else {}),
        "tls": {
            "ca": rel(consortium.ca_cert),
            "cert": rel(consortium.coordinator_cert),
            "key": rel(consortium.coordinator_key),
        },
        "model": (
            {"initial_model": rel(initial_model)}
            if initial_model is not None
            else {"factory": model_factory}
            if model_factory is not None
            else {"init": "zeros", "size": model_size}
        ),
        "rounds": rounds_table,
        "deadlines": (deadlines or Deadlines()).model_dump(),
    }
    if privacy is not None:
        serve_doc["privacy"] = privacy.model_dump()
    if paillier_public_key is not None:
        serve_doc["mode"] = "paillier"
        serve_doc["paillier_public_key"] = rel(paillier_public_key)
    if silo_dp is not None:
        serve_doc["silo_dp"] = silo_dp.model_dump()
    audit_public = consortium.audit_public_key.read_text(encoding="utf-8").strip()
    serve_path = out / "serve.toml"
    _write_new(serve_path, serve_doc, title="secagg coordinator (demo)")

    silo_paths: list[Path] = []
    silos = list(consortium.silos.items())
    for index, (silo, paths) in enumerate(silos):
        silo_doc: dict[str, Any] = {
            "silo": silo,
            "coordinator": coordinator,
            "federation": consortium.federation,
            "roster": rel(consortium.roster),
            "consortium_public_key": pinned,
            "signing_key": rel(paths.signing_key),
            "audit_public_key": audit_public,
            "mode": "masking" if paillier_public_key is None else "paillier",
            "state_dir": rel(out / "state" / silo),
            "tls": {"ca": rel(paths.ca_cert), "cert": rel(paths.cert), "key": rel(paths.key)},
            "policy": {"min_cohort": min_cohort, "max_collusion_assumed": collusion},
            "task": (
                {"entry": task_entry}
                if task_entry is not None
                else {"shard": index, "num_shards": len(silos), **(task or {})}
            ),
        }
        silo_path = out / f"silo-{silo}.toml"
        _write_new(silo_path, silo_doc, title=f"secagg silo {silo} (demo)")
        silo_paths.append(silo_path)

    ServeConfig.load(serve_path)
    for silo_path in silo_paths:
        SiloConfig.load(silo_path)
    return serve_path, silo_paths


def _write_new(path: Path, doc: Mapping[str, Any], *, title: str) -> None:
    """Write ``doc`` as TOML under a title comment, refusing to replace an existing file."""
    text = f"# {title}: written by secagg; paths are relative to this file.\n\n" + tomli_w.dumps(
        doc
    )
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError as exc:
        raise ConfigError(f"{path} already exists: refusing to overwrite it") from exc
