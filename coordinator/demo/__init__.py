"""``secagg demo``: a throwaway consortium, a coordinator on SQLite (or ``--store`` PostgreSQL), hospital silos as
processes, and a final table.

Everything runs on loopback with mutual TLS; the silos are separate operating-system processes running
``secagg silo``, exactly as a real deployment would run them, and train with DP-SGD (Opacus).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from audits import ReportError, build_report, find_chromium, write_pdf, write_report
from audits.database import is_postgresql, redact
from coordinator.common import RoundStatus, ledger_origin
from coordinator.config import (
    Deadlines,
    MaskingDeadlines,
    PrivacyConfig,
    ServeConfig,
    SiloDPConfig,
    write_demo_configs,
)
from coordinator.errors import NotFound, StoreError
from coordinator.logs import LogFormat, LogLevel, configure_logging
from coordinator.pki import PASSPHRASE_ENV, create_consortium
from coordinator.rounds.audit import export_bundle, verify_bundle_dir
from coordinator.sdk.example import EVENT_PREFIX
from coordinator.server.app import start_coordinator
from coordinator.store import SQLStore

__all__ = ["DemoOptions", "run_demo"]

SILO_DP_NOISE_MULTIPLIER = 0.5
"""Central noise over the clip norm for ``--silo-dp``: with three silos the noise is large next to the signal."""
SILO_DP_CLIP = 3.0
"""L2 clip of each silo's round update under ``--silo-dp`` (the demo's updates have norm about 2 to 2.5)."""

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c", "hospital-d", "hospital-e", "hospital-f")


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """What ``secagg demo`` can vary; everything else is the embedded default."""

    silos: int = 3
    rounds: int = 5
    out: Path = Path("secagg-demo")
    epsilon: float | None = None
    silo_dp: bool = False
    mode: str = "masking"
    store: str | None = None
    """A ``postgresql://`` URL of an empty database for the coordinator; ``out/coordinator.sqlite`` if ``None``."""
    log_level: LogLevel = "info"
    """Least severe event written to ``coordinator.log`` and each ``silo-<id>.log``."""
    log_format: LogFormat = "json"
    """The log files' format: one JSON object per line (default) or console text."""


@dataclass
class _SiloView:
    status: str = "starting"
    round: int = -1
    epsilon: float = 0.0
    budget: float = 0.0
    delta: float = 0.0
    rounds_completed: int = 0
    log: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status_table(views: dict[str, _SiloView], rounds: int, aggregation: str) -> Table:
    table = Table(title=f"Federated training: {rounds} rounds, {aggregation}, DP-SGD in every silo")
    for column in ("silo", "round", "status", "epsilon spent", "budget"):
        table.add_column(column)
    for silo, view in views.items():
        table.add_row(
            silo,
            f"{max(view.round, 0) + 1}/{rounds}",
            view.status,
            f"{view.epsilon:.3f}",
            f"{view.budget:g}" if view.budget else "",
        )
    return table


def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; returns the process exit code."""
    from dp.training.example import (  # torch loads only when the demo runs
        DEMO_BATCH_SIZE,
        DEMO_BUDGET,
        DEMO_LOCAL_EPOCHS,
        DEMO_LR,
        evaluate,
        load_breast_cancer_silos,
        train_central_baseline,
    )

    console = console or Console()
    if not 3 <= options.silos <= len(HOSPITALS):
        console.print(f"[red]--silos must be between 3 and {len(HOSPITALS)}[/red]")
        return 2
    if options.mode not in ("masking", "paillier") or (
        options.silo_dp and options.mode != "masking"
    ):
        console.print("[red]--mode is 'masking' or 'paillier'; --silo-dp needs masking mode[/red]")
        return 2
    out = options.out
    if out.exists() and any(out.iterdir()):
        console.print(f"[red]{out} exists and is not empty; pass --out with a new directory[/red]")
        return 2
    if options.store is not None:
        refused = _store_refusal(options.store)
        if refused:
            console.print(refused, style="red", markup=False, soft_wrap=True)
            return 2
    silos = list(HOSPITALS[: options.silos])
    epsilon = options.epsilon if options.epsilon is not None else DEMO_BUDGET.epsilon
    started = time.perf_counter()
    console.print(f"[bold]secagg demo[/bold]: consortium of {len(silos)} hospitals in {out}/")
    consortium = create_consortium(out / "pki", federation="hospitals", silos=silos)
    if consortium.passphrase_file.is_file():
        # The keys are encrypted at rest; this process and the silo processes it starts read the generated
        # passphrase from the file the throwaway consortium wrote (no prompt, no argument).
        os.environ[PASSPHRASE_ENV] = str(consortium.passphrase_file.resolve())
    paillier_key = None
    if options.mode == "paillier":
        # any two silos can decrypt an aggregate; min_cohort 3 still refuses to decrypt fewer contributions
        from coordinator.pki.paillier import create_paillier_keys  # the paillier extra, only here

        paillier_key = create_paillier_keys(consortium, threshold=2)
    split = load_breast_cancer_silos(n_silos=len(silos), seed=0)
    n_params = split.n_features * 2 + 2
    port = _free_port()
    serve_path, silo_paths = write_demo_configs(
        consortium,
        out,
        rounds=options.rounds,
        clip=SILO_DP_CLIP if options.silo_dp else 10.0,
        bits=20,
        min_cohort=3,
        model_size=n_params,
        listen=f"127.0.0.1:{port}",
        # silo processes import torch before they advertise; Paillier's defaults (collect 150 s, decrypt 60 s)
        # equal the sums of these stages
        deadlines=Deadlines(
            masking=MaskingDeadlines(
                advertise=120, share_keys=30, masked_input=30, consistency=30, unmask=30
            )
        ),
        task={
            "epsilon": epsilon,
            "delta": DEMO_BUDGET.delta,
            "local_epochs": DEMO_LOCAL_EPOCHS,
            "lr": DEMO_LR,
            "batch_size": DEMO_BATCH_SIZE,
        },
        privacy=PrivacyConfig(epsilon=epsilon, delta=DEMO_BUDGET.delta),
        paillier_public_key=paillier_key,
        storage=options.store,
        silo_dp=(
            SiloDPConfig(noise_multiplier=SILO_DP_NOISE_MULTIPLIER, delta=DEMO_BUDGET.delta)
            if options.silo_dp
            else None
        ),
    )
    serve = ServeConfig.load(serve_path)
    # the embedded coordinator logs to out/coordinator.log only: the console shows the live table
    coordinator_log = configure_logging(
        level=options.log_level, fmt=options.log_format, path=out / "coordinator.log"
    )
    coordinator = start_coordinator(serve)
    aggregation = {
        "paillier": "threshold Paillier aggregation",
        "masking": "masked secure aggregation" + (" + silo-level DP" if options.silo_dp else ""),
    }[options.mode]
    views = {silo: _SiloView() for silo in silos}
    lock = threading.Lock()
    processes = []
    for silo, path in zip(silos, silo_paths, strict=True):
        log_file = (out / f"silo-{silo}.log").open("w", encoding="utf-8")
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [
                sys.executable,
                "-m",
                "coordinator.cli",
                "silo",
                "--config",
                str(path),
                "--events",
                "--log-level",
                options.log_level,
                "--log-format",
                options.log_format,
            ],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            # a tiny model: more than one torch thread per silo only contends for the shared cores
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        processes.append((silo, process, log_file))

    def follow(silo: str, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if not line.startswith(EVENT_PREFIX):
                continue
            event: dict[str, Any] = json.loads(line[len(EVENT_PREFIX) :])
            with lock:
                view = views[silo]
                kind = event["kind"]
                if kind == "joined":
                    view.status = f"joined ({event['records']} records)"
                elif kind == "training":
                    view.round, view.status = event["round"], "training (DP-SGD)"
                elif kind == "trained":
                    view.status, view.epsilon = "secure aggregation", event["epsilon"]
                elif kind == "round":
                    view.status = event["status"]
                    view.epsilon, view.budget, view.delta = (
                        event["epsilon"],
                        event["budget"],
                        event["delta"],
                    )
                    view.rounds_completed += event["status"] == RoundStatus.COMPLETED.value
                elif kind == "done":
                    view.status = "done"

    followers = [threading.Thread(target=follow, args=(s, p), daemon=True) for s, p, _ in processes]
    for thread in followers:
        thread.start()
    with Live(
        _status_table(views, options.rounds, aggregation), console=console, refresh_per_second=4
    ) as live:
        while any(p.poll() is None for _, p, _ in processes):
            with lock:
                live.update(_status_table(views, options.rounds, aggregation))
            time.sleep(0.25)
        for thread in followers:
            thread.join(5)
        live.update(_status_table(views, options.rounds, aggregation))
    console.print()
    failed = [(s, p.returncode) for s, p, _ in processes if p.returncode != 0]
    for _, _, log_file in processes:
        log_file.close()
    coordinator.service.wait_finished(10)
    records = coordinator.store.rounds("hospitals")
    final_model, _ = coordinator.store.model("hospitals", len(records))
    coordinator.stop()
    logging.getLogger().removeHandler(coordinator_log)
    coordinator_log.close()
    if failed:
        for silo, code in failed:
            console.print(f"[red]{silo} exited with {code}; see {out / f'silo-{silo}.log'}[/red]")
        return 1

    bundle_dir, report_dir = out / "audit-bundle", out / "audit-report"
    export_bundle(ServeConfig.load(serve_path), bundle_dir)
    # The demo created the consortium, so it knows the three pins an auditor would be handed out of band.
    origin = ledger_origin(serve.federation)
    verified, _ = verify_bundle_dir(
        bundle_dir,
        audit_public_key=_hex_file(consortium.audit_public_key),
        consortium_public_key=_hex_file(consortium.consortium_public_key),
        origin=origin,
        federation=serve.federation,
    )
    assert verified.anchors.fully_pinned, "the demo verifies with every pin"
    _, report_html = write_report(build_report(verified), report_dir)
    pdf_note = _print_pdf(report_html)
    pins = (
        f"--audit-key {consortium.audit_public_key} "
        f"--consortium-key {consortium.consortium_public_key} --origin {origin}"
    )

    x, y = split.pooled()
    baseline = evaluate(train_central_baseline(x, y), split.test_features, split.test_labels)
    federated = evaluate(final_model, split.test_features, split.test_labels)
    completed = sum(r.status is RoundStatus.COMPLETED for r in records)
    dropouts = sum(len(r.dropped) for r in records)

    summary = Table(title="Result")
    summary.add_column("")
    summary.add_column("value", justify="right")
    summary.add_row(
        "federated model, DP-SGD + secure aggregation: test accuracy", f"{federated:.1%}"
    )
    summary.add_row("same model trained centrally, no privacy: test accuracy", f"{baseline:.1%}")
    summary.add_row("rounds completed / planned", f"{completed}/{options.rounds}")
    summary.add_row("dropouts", str(dropouts))
    console.print(summary)
    privacy = Table(title="Privacy spent per silo (record-level DP-SGD, RDP accountant)")
    for column in ("silo", "epsilon spent", "epsilon budget", "delta"):
        privacy.add_column(column, justify="right")
    for silo, view in views.items():
        privacy.add_row(silo, f"{view.epsilon:.3f}", f"{view.budget:g}", f"{view.delta:g}")
    console.print(privacy)
    write_json(
        out / "summary.json",
        {
            "federated_accuracy": federated,
            "central_nonprivate_accuracy": baseline,
            "rounds_completed": completed,
            "rounds_planned": options.rounds,
            "dropouts": dropouts,
            "silos": {
                s: {"epsilon": v.epsilon, "budget": v.budget, "delta": v.delta}
                for s, v in views.items()
            },
        },
    )
    cp = verified.checkpoint
    console.print(
        f"Audit ledger: {cp.size} entries, signed checkpoint root {cp.root.hex()[:16]}..., verified: "
        f"{verified.attestations_checked} privacy attestations, every epsilon recomputed; every silo "
        f"witnessed each round's checkpoint."
    )
    database = (
        "coordinator.sqlite (rounds, models, ledger)"
        if options.store is None
        else f"and in {redact(options.store)}: rounds, models, ledger"
    )
    console.print(
        f"Finished in {time.perf_counter() - started:.1f} s. Outputs in {out}/:\n"
        f"  audit report    {report_html}, report.json{pdf_note}\n"
        f"  audit bundle    {bundle_dir}/\n"
        f"  summary.json, {database}, pki/ (throwaway keys), "
        f"silo-*.log, state/ (each silo's accountant and witness)",
        soft_wrap=True,
    )
    # one line each, never wrapped: they are meant to be copied
    console.print("Re-check the audit trail with the pinned keys and log origin:", soft_wrap=True)
    console.print(f"  secagg audit verify {bundle_dir} {pins}", soft_wrap=True, markup=False)
    console.print(
        f"  secagg audit report {bundle_dir} --out {report_dir} {pins}",
        soft_wrap=True,
        markup=False,
    )
    return 0


def _store_refusal(store: str) -> str | None:
    """Why ``--store`` cannot be used (not PostgreSQL, unreachable, already holding the demo), or ``None``."""
    if not is_postgresql(store):
        return "--store takes a postgresql:// URL (without it the demo uses SQLite in --out)"
    try:
        probe = SQLStore(store)
    except StoreError as exc:
        return str(exc)
    try:
        probe.settings("hospitals")
    except NotFound:
        return None
    finally:
        probe.close()
    return f"{redact(store)} already holds a demo federation; give --store an empty database"


def _print_pdf(report_html: Path) -> str:
    """Print report.pdf beside the HTML when headless Chromium is there; what to tell the user."""
    if find_chromium() is None:
        return " (no PDF: headless Chromium not found)"
    try:
        return f" and {write_pdf(report_html).name}"
    except ReportError as exc:
        return f" ({exc})"


def _hex_file(path: Path) -> bytes:
    return bytes.fromhex(path.read_text(encoding="utf-8").strip())


def write_json(path: Path, data: Any) -> None:
    """Write JSON with a trailing newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
