"""Errors as sentences: each runtime failure a user can cause or meet ends in one line saying what happened and
what to do, the traceback only with ``--debug`` (the real ``secagg`` commands, real gRPC over mTLS)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w

from coordinator.config import write_demo_configs
from coordinator.errors import AuditFailure, Unauthorized
from coordinator.pki.custody import PASSPHRASE_ENV
from coordinator.rounds.masking import MaskingRounds
from coordinator.sdk import RetryPolicy, Silo
from coordinator.server.masking import create_server
from coordinator.store import SQLiteStore
from tests.e2e.harness import (
    FEDERATION,
    Consortium,
    audit_trail,
    exact,
    in_threads,
    integer_update,
    running_coordinator,
    settings,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SECAGG = Path(sys.executable).parent / "secagg"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def secagg(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SECAGG), *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    return line


def edit(path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture
def files(trio: Consortium, tmp_path: Path) -> tuple[Path, list[Path], int]:
    port = free_port()
    serve, silos = write_demo_configs(
        trio.paths, tmp_path / "fed", rounds=1, model_size=62, listen=f"127.0.0.1:{port}"
    )
    return serve, silos, port


def test_coordinator_unreachable(files: tuple[Path, list[Path], int]) -> None:
    _, silos, port = files  # nothing listens on the port
    line = one_line(secagg("silo", "--config", str(silos[0])))
    assert line.startswith(f"error: cannot reach the coordinator at 127.0.0.1:{port} (")
    assert line.endswith(
        "check that `secagg serve` is running there and that `coordinator` in silo.toml is its host:port"
    )


def test_a_silo_key_that_is_not_its_certificate_s(
    trio: Consortium, files: tuple[Path, list[Path], int]
) -> None:
    _, silos, _ = files
    other = trio.paths.silos["b"].key

    def swap(doc: dict[str, Any]) -> None:
        doc["tls"]["key"] = str(other)

    line = one_line(secagg("silo", "--config", str(edit(silos[0], swap))))
    assert line.startswith("error: the silo a key ") and line.endswith(
        "[tls] key and cert must be the pair made for this endpoint"
    )
    debug = secagg(
        "--debug", "silo", "--config", str(silos[0])
    )  # the same error, with its traceback
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_coordinator_certificate_that_does_not_fit_its_key(
    trio: Consortium, files: tuple[Path, list[Path], int]
) -> None:
    serve, _, _ = files

    def swap(doc: dict[str, Any]) -> None:
        doc["tls"]["key"] = str(trio.paths.silos["a"].key)

    line = one_line(secagg("serve", "--config", str(edit(serve, swap))))
    assert line.startswith("error: the coordinator key ")  # not gRPC's "Failed to bind to address"
    assert "does not belong to the certificate" in line


def test_a_command_that_opens_a_key_without_a_passphrase(
    files: tuple[Path, list[Path], int], tmp_path: Path
) -> None:
    """`audit export` opens the audit key to sign a checkpoint; with no passphrase it says how to give one."""
    serve, _, _ = files
    env = {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}
    line = one_line(
        secagg("audit", "export", "--config", str(serve), "--out", str(tmp_path / "b"), env=env)
    )
    assert line == (
        f"error: no passphrase for the private keys: set {PASSPHRASE_ENV} to a file (mode 0600) holding it, "
        "or run in a terminal to be prompted"
    )
    assert not (tmp_path / "b").exists()


def test_a_governance_pin_that_is_not_a_governance_file(tmp_path: Path) -> None:
    bad = tmp_path / "governance.json"
    bad.write_text('{"governors": ["00"], "quorum": 1}', encoding="utf-8")
    pins = ["--audit-key", "00", "--consortium-key", "00", "--federation", "fed"]
    done = secagg("audit", "verify", str(tmp_path), *pins, "--governance", str(bad))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"error: --governance {bad}: a governance needs distinct 32-byte Ed25519 governor keys (give the "
        "governance.json the federation was created with)"
    )


def test_port_in_use(files: tuple[Path, list[Path], int]) -> None:
    serve, _, port = files
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        line = one_line(secagg("serve", "--config", str(serve)))
    assert line == (
        f"error: cannot bind 127.0.0.1:{port}: the port is in use (another coordinator?) or the address is "
        "not local; stop the other process or change `listen` in serve.toml"
    )


def test_unknown_silo(trio: Consortium, tmp_path: Path) -> None:
    """A caller the roster does not list (here over the debug-only plaintext port, which trusts a header)."""
    db = tmp_path / "c.db"
    service = MaskingRounds(
        settings=settings(n=3, length=8),
        roster=trio.roster,
        store=SQLiteStore(db),
        initial_model=np.zeros(8, np.float32),
        audit=audit_trail(trio, db),
    )
    server, port = create_server(service, "127.0.0.1:0", tls=None, insecure_debug_no_tls=True)
    server.start()
    try:
        with (
            Silo(
                address=f"127.0.0.1:{port}",
                federation=FEDERATION,
                silo="mallory",  # what a silo.toml naming an id the roster lacks sends
                signing_key=trio.signing_key("a"),
                roster=trio.roster,
                consortium_key=trio.consortium_key,
                tls=None,
                insecure_debug_no_tls=True,
                retry=RetryPolicy(attempts=1),
            ) as silo,
            pytest.raises(Unauthorized) as refused,
        ):
            silo.join()
    finally:
        server.stop(0).wait()
        service.audit.close()
    assert str(refused.value) == (
        f"the coordinator at 127.0.0.1:{port} refused silo 'mallory' of federation {FEDERATION!r}: 'mallory' is "
        f"not on the roster of federation {FEDERATION!r}: ask the consortium to add it, or check `silo` in "
        "silo.toml"
    )


def test_a_new_study_on_an_old_state_directory_says_new_federation_id(
    trio: Consortium, tmp_path: Path
) -> None:
    from coordinator.pki import ConsortiumPaths

    audit_key = bytes.fromhex(
        ConsortiumPaths.load(trio.paths.root).audit_public_key.read_text().strip()
    )
    state = tmp_path / "state"

    def run_one_round(db: Path) -> None:
        with running_coordinator(trio, db, settings(n=3, length=16)) as coord:

            def silo(s: str) -> None:
                with trio.sdk(
                    s,
                    coord.address,
                    audit_public_key=audit_key,
                    witness_path=state / s / "witness.sqlite",
                ) as client:
                    list(client.run(lambda ctx: exact(integer_update(ord(s), 16))))

            in_threads(*[lambda s=s: silo(s) for s in trio.silos])

    run_one_round(tmp_path / "first.db")
    with (
        running_coordinator(trio, tmp_path / "second.db", settings(n=3, length=16)) as coord,
        trio.sdk(
            "a",
            coord.address,
            audit_public_key=audit_key,
            witness_path=state / "a" / "witness.sqlite",
        ) as client,
        pytest.raises(AuditFailure) as refused,
    ):
        client.join()  # refused before round 0, so nothing is trained
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(
        f"this silo's state directory ({state / 'a'}) holds the audit log of an earlier run"
    )
    assert "a new study needs a new federation id (or a fresh state_dir for this silo)" in message
    assert not message.startswith("coordinator rewrote history")
