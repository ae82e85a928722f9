"""The README's "Production enrolment", followed literally: its commands and files, one directory per machine.

Nothing here restates the walkthrough: the commands are the ``sh`` blocks of that README section and the
configuration files are its ``toml`` blocks, run as ``secagg`` processes. Each party has a machine (a fresh
directory, the working directory of its commands) and a passphrase file of its own; between machines only the
files the README marks "send" travel, under the names its next command uses. What the test adds, and nothing
more: it fills each ``<...>`` from what that party holds, runs the hospital lines for every hospital with its own
id, answers the ``y/N`` prompts, and stands in for DNS (``coordinator.example.org`` is ``127.0.0.1``, port 50051
a free port). If the README changes in a way a reader could not follow, this test fails.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.pki import PASSPHRASE_ENV

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
SECAGG = Path(sys.executable).parent / "secagg"
HOSPITALS = ("st-anne", "st-bart", "st-clare")
GOVERNORS = ("gov-1", "gov-2", "gov-3")
PRIVATE = {
    **{g: {"governor.key"} for g in GOVERNORS},
    "ca": {"ca.key", "consortium.key"},
    "coordinator": {"key.pem", "signing.key", "audit.key"},
    **{h: {"key.pem", "signing.key"} for h in HOSPITALS},
}


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@dataclass(frozen=True)
class Step:
    """One command of the walkthrough and who runs it (the full-line comment above it)."""

    who: str
    command: str

    def argv(self, **substitutions: str) -> list[str]:
        """The command as a party runs it: each ``old`` replaced by ``new`` first, then split as a shell does."""
        command = self.command
        for old, new in substitutions.items():
            command = command.replace(old, new)
        return shlex.split(command)


def steps(script: str) -> Iterator[Step]:
    """The commands of a ``sh`` block: continuation lines joined, inline comments dropped, ``&&`` split."""
    who = ""
    logical: list[str] = []
    for raw in script.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#") and not logical:
            who = line.lstrip("# ")
            continue
        logical.append(line.split(" #")[0].rstrip().removesuffix("\\").strip())
        if not line.split(" #")[0].rstrip().endswith("\\"):
            for command in " ".join(logical).split("&&"):
                yield Step(who, command.strip())
            logical = []


@dataclass
class Machine:
    """One party's computer: a directory its commands run in, and a passphrase file outside it."""

    name: str
    root: Path
    passphrase: Path

    def run(self, argv: list[str], *, answer: str = "", env: dict[str, str] | None = None) -> str:
        assert argv[0] == "secagg", argv
        result = subprocess.run(
            [str(SECAGG), *argv[1:]],
            cwd=self.root,
            input=answer,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, PASSPHRASE_ENV: str(self.passphrase), **(env or {})},
        )
        assert result.returncode == 0, (self.name, argv, result.stdout, result.stderr)
        return result.stdout

    def send(self, path: str, to: Machine, name: str) -> None:
        """Hand a public file to another machine (a private key never travels: checked at the end)."""
        data = (self.root / path).read_bytes()
        assert b"PRIVATE KEY" not in data, path
        (to.root / name).write_bytes(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


DNS_NAME, COORDINATOR_HOST = "coordinator.example.org", "127.0.0.1"  # this test's stand-in for DNS


def fill(text: str, machine: Machine, *, silo: str, port: int) -> str:
    """A README file as ``silo``'s (or the coordinator's) machine writes it."""
    text = text.replace("st-anne", silo).replace(DNS_NAME, COORDINATOR_HOST)
    text = text.replace("0.0.0.0:50051", f"127.0.0.1:{port}").replace(":50051", f":{port}")

    def held(match: re.Match[str]) -> str:
        return (machine.root / match.group(1)).read_text(encoding="ascii").strip()

    return re.sub(r"<the hex in (\S+)>", held, text)


def test_the_readme_walkthrough_runs_a_federation(tmp_path: Path) -> None:
    walkthrough = section(README.read_text(encoding="utf-8"), "Production enrolment")
    enrolment, running = blocks(walkthrough, "sh")[:2]
    serve_toml, silo_toml = blocks(walkthrough, "toml")[
        1:3
    ]  # the first is the [governance] excerpt
    assert serve_toml.startswith("# serve.toml") and silo_toml.startswith("# silo.toml")

    secrets = tmp_path / "passphrases"
    secrets.mkdir()

    def machine(name: str) -> Machine:
        passphrase = secrets / name
        passphrase.write_text(f"{name} {os.urandom(12).hex()}\n", encoding="utf-8")
        passphrase.chmod(0o600)
        (tmp_path / name).mkdir()
        return Machine(name, tmp_path / name, passphrase)

    governors = [machine(g) for g in GOVERNORS]
    ca, coordinator = machine("ca"), machine("coordinator")
    hospitals = [machine(h) for h in HOSPITALS]
    port = free_port()
    ca_fingerprint = ""
    organisations = [
        (coordinator, "coordinator", "coord/"),
        *((h, h.name, "site/") for h in hospitals),
    ]

    for step in steps(enrolment):
        who = step.who
        if who.startswith("each governor"):
            for i, g in enumerate(governors, 1):
                g.run(step.argv())
                g.send("gov/governor.pub", ca, f"gov-{i}.pub")
        elif who.startswith("the CA operator (offline machine)"):
            (ca_fingerprint,) = re.findall(r"sha256 ([0-9a-f]{64})", ca.run(step.argv()))
        elif who == "the coordinator operator":
            told = coordinator.run(step.argv(**{DNS_NAME: COORDINATOR_HOST}))
            assert re.search(r"sha256 [0-9a-f]{64}", told)  # the fingerprints to read out by phone
            coordinator.send("coord/request.json", ca, "coordinator.request.json")
        elif who == "each hospital":
            for h in hospitals:
                h.run(step.argv(**{"st-anne": h.name}))
                h.send("site/request.json", ca, f"{h.name}.request.json")
        elif who.startswith("the CA operator, once per request"):
            for org, member, _ in organisations:
                assert "sha256" in ca.run(step.argv(**{"st-anne": member}), answer="y\n")
                ca.send(f"{member}.issued.json", org, f"{member}.issued.json")
        elif who.startswith("each organisation: checks the chain"):
            for org, member, directory in organisations:
                placeholder = re.search(r"<CA sha256[^>]*>", step.command)
                assert placeholder, step.command
                org.run(
                    step.argv(
                        **{"st-anne": member, "site/": directory, placeholder[0]: ca_fingerprint}
                    )
                )
        elif who.startswith("the CA operator, after every request"):
            ca.run(step.argv())
        elif who.startswith("two of the three governors"):
            for g in governors[:2]:
                ca.send("roster-v1.json", g, "roster-v1.json")
                g.run(step.argv(), answer="y\n")
                g.send("roster-v1.json", ca, "roster-v1.json")  # back, with its signature
        elif who.startswith("the CA operator: the approved"):
            ca.run(step.argv())
            for org, _, _ in organisations:
                ca.send("federation.json", org, "federation.json")
        elif who.startswith("each organisation: checks 2 of 3"):
            for org, _, directory in organisations:
                org.run(step.argv(**{"site/": directory}))
        else:
            pytest.fail(f"a README step this test does not know who runs: {who!r}: {step.command}")

    (coordinator.root / "serve.toml").write_text(
        fill(serve_toml, coordinator, silo="", port=port), encoding="utf-8"
    )
    for h in hospitals:
        (h.root / "silo.toml").write_text(
            fill(silo_toml, h, silo=h.name, port=port), encoding="utf-8"
        )

    run = list(steps(running))
    assert [s.who for s in run] == [
        "the coordinator operator",
        "each hospital",
        *[
            "the coordinator operator, after the last round: the ledger, for anyone to check against "
            "pinned keys"
        ]
        * 2,
    ]

    def start(m: Machine, step: Step) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(SECAGG), *step.argv()[1:]],
            cwd=m.root,
            env={**os.environ, PASSPHRASE_ENV: str(m.passphrase)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    processes = [start(coordinator, run[0])]
    try:
        assert processes[0].stdout is not None
        started = []  # the operator starts the silos once the coordinator says it listens
        for line in processes[0].stdout:
            started.append(line)
            if f"listening on port {port}" in line:
                break
        else:
            pytest.fail(f"secagg serve stopped before listening: {''.join(started)}")
        processes += [start(h, run[1]) for h in hospitals]
        outputs = [p.communicate(timeout=300)[0] for p in processes[1:]]
        assert [p.returncode for p in processes[1:]] == [0, 0, 0], outputs
        served = "".join(started) + processes[0].communicate(timeout=120)[0]
        assert processes[0].returncode == 0, served
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert "federation 'hospitals' finished: 2 rounds completed" in served, served
    for step in run[2:]:
        coordinator.run(step.argv())

    # Only public files travelled: every private key is in its owner's machine only, 0600 and encrypted.
    machines = [*governors, ca, coordinator, *hospitals]
    for m in machines:
        keys = [
            p for p in m.root.rglob("*") if p.is_file() and b"PRIVATE KEY-----" in p.read_bytes()
        ]
        assert {k.name for k in keys} == PRIVATE[m.name], m.name
        for key in keys:
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
            assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"), key
            for other in machines:
                if other is not m:
                    for path in (p for p in other.root.rglob("*") if p.is_file()):
                        assert key.read_bytes() not in path.read_bytes(), (key, path)
