"""The ``secagg`` command line: one entry point for operators, silos and auditors."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from coordinator.logs import configure_logging

if TYPE_CHECKING:
    from audits import VerificationReport
    from audits.roster import Governance

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


class LogLevel(enum.StrEnum):
    """``--log-level``: the least severe event shown."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(enum.StrEnum):
    """``--log-format``: console text, or one JSON object per line."""

    CONSOLE = "console"
    JSON = "json"


LogLevelOption = Annotated[
    LogLevel, typer.Option("--log-level", help="Least severe log event shown (stderr).")
]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option("--log-format", help="Log events as console text or one JSON object per line."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"secagg {version('secagg')}")
        raise typer.Exit()


_DEBUG = {"on": False}
"""``--debug``: let an error's traceback through instead of its one-line sentence."""


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="On an error, show the traceback as well as the one-line message."
    ),
) -> None:
    """Privacy-first secure aggregation for cross-silo federated learning."""
    _DEBUG["on"] = debug
    if (
        not debug
    ):  # gRPC core's own error lines would follow the one-line message (read when grpc loads)
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")


@contextlib.contextmanager
def _sentences() -> Iterator[None]:
    """Turn a runtime failure into one line saying what happened and what to do (exit 1); the traceback only
    with ``--debug``. The project's own errors already say it; an unexpected one is named with its type."""
    from audits import AuditError
    from coordinator.errors import CoordinatorError
    from dp.errors import PrivacyError
    from secagg import SecAggError

    try:
        yield
    except (typer.Exit, KeyboardInterrupt):
        raise
    except (CoordinatorError, PrivacyError, SecAggError, AuditError, OSError) as exc:
        if _DEBUG["on"]:
            raise
        _fail(_one_line(str(exc) or type(exc).__name__))
    except Exception as exc:
        if _DEBUG["on"]:
            raise
        _fail(
            _one_line(f"unexpected {type(exc).__name__}: {exc}")
            + " (run with --debug for the traceback, and report it)"
        )


def _one_line(message: str) -> str:
    return " ".join(message.split())


# --- pki: consortium CA, certificates, roster and keys ----------------------------------------------------
# (owned by the PKI layer: coordinator/pki.py; other commands live outside this block)

_DEV_WARNING = (
    "WARNING: this is a THROWAWAY DEVELOPMENT consortium. One process made every party's keys, so whoever ran "
    "it holds them all (encrypted, with the passphrase next to them unless SECAGG_PASSPHRASE_FILE was set). "
    "Never use it for real data; a production consortium enrols each organisation with `secagg pki request`, "
    "`sign` and `install` (README, Production enrolment)."
)

_KEY_CUSTODY_NOTE = (
    "Private keys are encrypted under the passphrase in the file $SECAGG_PASSPHRASE_FILE names, or typed at "
    "a prompt; never give it as an argument. The CA, consortium, governor and audit keys can live in a "
    "PKCS#11 token instead (--ca-key, --consortium-key, --key, --audit-key with a pkcs11: URI; the hsm "
    "extra): the module comes from the URI's module-path or $SECAGG_PKCS11_MODULE, the PIN from the file "
    "$SECAGG_PKCS11_PIN_FILE names."
)
_URI_HELP = (
    "a PKCS#11 URI (RFC 7512), e.g. 'pkcs11:token=secagg;object=ca;type=private'; no PIN in it "
    "(the PIN comes from the file $SECAGG_PKCS11_PIN_FILE names)"
)
CaKeyOption = Annotated[
    str | None,
    typer.Option(
        "--ca-key", help=f"The CA key in a token instead of CA_DIR/ca.key(.uri): {_URI_HELP}."
    ),
]
GovernorKeyOption = Annotated[
    str | None,
    typer.Option(
        "--key", help=f"The governor key in a token instead of GOV_DIR/governor.key: {_URI_HELP}."
    ),
]


def _passphrase_unless_token(key_file: Path, override: str | None, purpose: str) -> bytes | None:
    """The passphrase for ``key_file``, or ``None`` when the key lives in a token (nothing to decrypt)."""
    from coordinator.pki import read_passphrase
    from coordinator.pki.signer import reference_file

    if override is not None or (not key_file.exists() and reference_file(key_file).is_file()):
        return None
    return read_passphrase(purpose=purpose)


pki_app = typer.Typer(
    no_args_is_help=True,
    help="Consortium PKI: enrolment (governor/ca init, request, sign, publish, install) and the development "
    "consortium (init). " + _KEY_CUSTODY_NOTE,
)
app.add_typer(pki_app, name="pki")
governor_app = typer.Typer(no_args_is_help=True, help="A roster governor's own signing key.")
pki_app.add_typer(governor_app, name="governor")
ca_app = typer.Typer(no_args_is_help=True, help="The consortium certificate authority.")
pki_app.add_typer(ca_app, name="ca")


def _pki_error(exc: Exception) -> typer.Exit:
    """Print a one-line PKI error and return the exit to raise."""
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def _new_passphrase(purpose: str) -> bytes:
    from coordinator.pki import read_passphrase

    return read_passphrase(confirm=True, purpose=purpose)


def _read_governor_key(path: Path) -> bytes:
    """A governor's public key from its ``governor.pub`` (hex)."""
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(
            f"--governor {path}: not a readable governor.pub (hex key)"
        ) from exc


def _existing_passphrase(purpose: str) -> bytes:
    from coordinator.pki import read_passphrase

    return read_passphrase(purpose=purpose)


def _print_fingerprints(fingerprints: dict[str, str]) -> None:
    for name, value in fingerprints.items():
        typer.echo(f"  {name:<11} sha256 {value}")


@governor_app.command("init")
def _pki_governor_init(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="GOV_DIR", help="New or empty directory, on the governor's machine."
        ),
    ],
    key: Annotated[
        str | None,
        typer.Option("--key", help=f"Generate the governor key in a token: {_URI_HELP}."),
    ] = None,
) -> None:
    """Make a governor's Ed25519 signing key in GOV_DIR; send GOV_DIR/governor.pub to the CA operator."""
    from coordinator.errors import PKIError
    from coordinator.pki.enrol import governor_init

    try:
        public = governor_init(
            directory,
            passphrase=None if key else _new_passphrase("the governor key"),
            key=key,
        )
    except PKIError as exc:
        raise _pki_error(exc) from exc
    if key:
        typer.echo(
            f"governor key generated in the token ({key}); {directory}/governor.key.uri names it"
        )
    else:
        typer.echo(f"governor key written to {directory}/governor.key (encrypted, 0600)")
    typer.echo(
        f"public key {public.read_text(encoding='ascii').strip()} in {public}: send this file"
    )


@ca_app.command("init")
def _pki_ca_init(
    directory: Annotated[
        Path, typer.Argument(metavar="CA_DIR", help="New or empty directory (offline).")
    ],
    federation: Annotated[
        str, typer.Option("--federation", help="Federation id (also the SPIFFE trust domain).")
    ],
    governors: Annotated[
        int, typer.Option("--governors", min=1, help="N, the number of governors.")
    ],
    quorum: Annotated[
        int, typer.Option("--quorum", min=1, help="K, governor signatures a roster version needs.")
    ],
    governor: Annotated[
        list[Path],
        typer.Option("--governor", help="A governor's governor.pub (repeat N times)."),
    ],
    validity_days: Annotated[
        int, typer.Option("--validity-days", min=1, help="CA certificate lifetime in days.")
    ] = 365,
    ca_key: Annotated[
        str | None,
        typer.Option(
            "--ca-key", help=f"Generate the CA key (ECDSA P-256) in a token: {_URI_HELP}."
        ),
    ] = None,
    consortium_key: Annotated[
        str | None,
        typer.Option(
            "--consortium-key",
            help=f"Generate the consortium key (Ed25519) in a token: {_URI_HELP}.",
        ),
    ] = None,
) -> None:
    """Create the consortium CA, its roster-signing key and the K-of-N governance record in CA_DIR."""
    from coordinator.errors import PKIError
    from coordinator.pki.enrol import ca_init

    if len(governor) != governors:
        raise typer.BadParameter(
            f"--governors {governors} but {len(governor)} --governor files given"
        )
    try:
        keys = [bytes.fromhex(p.read_text(encoding="ascii").strip()) for p in governor]
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(
            "each --governor must be a governor.pub file (64 hex digits)"
        ) from exc
    try:
        paths = ca_init(
            directory,
            federation=federation,
            governors=keys,
            quorum=quorum,
            passphrase=None if ca_key and consortium_key else _new_passphrase("the CA keys"),
            validity_days=validity_days,
            ca_key=ca_key,
            consortium_key=consortium_key,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except PKIError as exc:
        raise _pki_error(exc) from exc
    from coordinator.pki import certificate_fingerprint, load_certificate

    typer.echo(
        f"CA for federation {federation!r} written to {paths.directory} ({quorum} of {governors})"
    )
    typer.echo(
        f"  CA certificate  {paths.ca_cert} sha256 {certificate_fingerprint(load_certificate(paths.ca_cert))}"
    )
    typer.echo(
        f"  consortium key  {paths.consortium_public_key.read_text(encoding='ascii').strip()}"
    )


@pki_app.command("request")
def _pki_request(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="ORG_DIR", help="New or empty directory, on the organisation's machine."
        ),
    ],
    member: Annotated[str, typer.Option("--id", help="The silo id, or the coordinator's name.")],
    role: Annotated[str, typer.Option("--role", help="silo or coordinator.")],
    federation: Annotated[str, typer.Option("--federation", help="The federation to join.")],
    host: Annotated[
        list[str],
        typer.Option(
            "--host", help="Coordinator only: a DNS name or IP address it serves on (repeatable)."
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    audit_key: Annotated[
        str | None,
        typer.Option(
            "--audit-key",
            help=f"Coordinator only: generate the audit key in a token ({_URI_HELP}); "
            "serve.toml's audit_key then names ORG_DIR/audit.key.uri.",
        ),
    ] = None,
    rotate: Annotated[
        bool,
        typer.Option(
            "--rotate",
            help="Silo only, in its enrolled ORG_DIR: make a new roster key (signing.key.next, used once a "
            "roster version lists it) and ORG_DIR/rotation.json (send only that).",
        ),
    ] = False,
) -> None:
    """Make this organisation's keys in ORG_DIR and ORG_DIR/request.json (send only request.json)."""
    from coordinator.errors import PKIError
    from coordinator.pki.enrol import request, request_rotation

    if role not in ("silo", "coordinator"):
        raise typer.BadParameter("--role must be silo or coordinator")
    if rotate:
        if role != "silo" or host or audit_key is not None:
            raise typer.BadParameter(
                "--rotate is for a silo's roster key (no --host, no --audit-key)"
            )
        try:
            paths, fingerprints = request_rotation(
                directory,
                member=member,
                federation=federation,
                passphrase=_existing_passphrase(f"the keys of {member}"),
            )
        except PKIError as exc:
            raise _pki_error(exc) from exc
        typer.echo(
            f"new roster key of silo {member!r} written to {paths.next_signing_key} (encrypted, 0600); "
            f"{paths.signing_key} stays in use until a roster version lists the new key"
        )
        typer.echo(
            f"rotation request written to {paths.rotation}: send it to the CA operator and confirm these "
            "by phone:"
        )
        _print_fingerprints(fingerprints)
        return
    try:
        paths, fingerprints = request(
            directory,
            member=member,
            role=role,  # type: ignore[arg-type]
            federation=federation,
            passphrase=_new_passphrase(f"the keys of {member}"),
            hosts=host,
            audit_key=audit_key,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except PKIError as exc:
        raise _pki_error(exc) from exc
    typer.echo(f"keys of {role} {member!r} written to {paths.directory} (encrypted, 0600)")
    typer.echo(
        f"request written to {paths.request}: send it to the CA operator and confirm these by phone:"
    )
    _print_fingerprints(fingerprints)


@pki_app.command("sign")
def _pki_sign(
    ca_dir: Annotated[Path, typer.Argument(metavar="CA_DIR", help="The CA directory.")],
    request_file: Annotated[
        Path, typer.Argument(metavar="REQUEST", help="An organisation's request.json.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Where to write the issued certificate (ISSUED).")
    ],
    yes: Annotated[
        bool, typer.Option("--yes", help="Do not ask: the fingerprints were confirmed out of band.")
    ] = False,
    validity_days: Annotated[
        int, typer.Option("--validity-days", min=1, help="Certificate lifetime in days.")
    ] = 365,
    ca_key: CaKeyOption = None,
) -> None:
    """Check a request's proofs of possession, show its fingerprints, and issue its certificate."""
    from coordinator.errors import PKIError
    from coordinator.pki.enrol import CaPaths, issue, read_request

    try:
        checked = read_request(ca_dir, request_file)
    except PKIError as exc:
        raise _pki_error(exc) from exc
    typer.echo(
        f"{'key rotation' if checked.rotation else 'request'} of {checked.role} {checked.member!r} "
        f"for federation {checked.federation!r}:"
    )
    _print_fingerprints(checked.fingerprints())
    if checked.hosts:
        typer.echo(f"  hosts       {', '.join(checked.hosts)}")
    if not yes and not typer.confirm("do these match what the organisation told you out of band?"):
        typer.echo("not issued")
        raise typer.Exit(code=1)
    try:
        issued = issue(
            ca_dir,
            checked,
            out,
            passphrase=_passphrase_unless_token(CaPaths.at(ca_dir).ca_key, ca_key, "the CA keys"),
            validity_days=validity_days,
            ca_key=ca_key,
        )
    except PKIError as exc:
        raise _pki_error(exc) from exc
    if checked.rotation:
        typer.echo(
            f"new roster key of {checked.member!r} recorded ({issued}, send it to {checked.member!r}); "
            f"now propose `secagg pki roster propose {ca_dir} --rotate {checked.member} --out V.json`"
        )
        return
    typer.echo(f"issued {issued}: send it to {checked.member!r}")


@pki_app.command("publish")
def _pki_publish(
    ca_dir: Annotated[Path, typer.Argument(metavar="CA_DIR", help="The CA directory.")],
    roster: Annotated[
        Path, typer.Option("--roster", help="The roster version K governors signed (roster sign).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Where to write the federation file.")],
    ca_key: CaKeyOption = None,
) -> None:
    """Write the public federation file (CA certificate, roster version, public keys) every member installs."""
    from coordinator.errors import PKIError
    from coordinator.pki.enrol import CaPaths, publish

    try:
        written = publish(
            ca_dir,
            out,
            roster_version=roster,
            passphrase=_passphrase_unless_token(CaPaths.at(ca_dir).ca_key, ca_key, "the CA keys"),
            ca_key=ca_key,
        )
    except PKIError as exc:
        raise _pki_error(exc) from exc
    typer.echo(f"federation file written to {written}: send it to every member")


@pki_app.command("install")
def _pki_install(
    directory: Annotated[
        Path, typer.Argument(metavar="ORG_DIR", help="Your organisation's directory.")
    ],
    document: Annotated[
        Path,
        typer.Argument(metavar="ISSUED", help="The issued certificate, or the federation file."),
    ],
    ca_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--ca-fingerprint", help="The CA certificate's sha256 you confirmed out of band."
        ),
    ] = None,
) -> None:
    """Check an issued certificate's chain (or a federation file's roster) and install it in ORG_DIR."""
    from coordinator.errors import PKIError
    from coordinator.pki.enrol import install

    try:
        typer.echo(install(directory, document, ca_fingerprint=ca_fingerprint))
    except PKIError as exc:
        raise _pki_error(exc) from exc


@pki_app.command(
    "init",
    help="Create a throwaway DEVELOPMENT consortium by running every enrolment step in one process. "
    + _DEV_WARNING,
)
def _pki_init(
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="New or empty directory for the consortium.")
    ],
    silos: Annotated[str, typer.Option("--silos", help="Comma-separated silo ids, e.g. a,b,c.")],
    federation: Annotated[
        str, typer.Option("--federation", help="Federation id (also the SPIFFE trust domain).")
    ] = "demo",
    hosts: Annotated[
        str, typer.Option("--hosts", help="Comma-separated DNS names and IPs of the coordinator.")
    ] = "localhost,127.0.0.1",
    validity_days: Annotated[
        int, typer.Option("--validity-days", min=1, help="Certificate lifetime in days.")
    ] = 30,
) -> None:
    from coordinator.errors import PKIError
    from coordinator.pki import create_consortium
    from secagg import Roster

    silo_ids = [s.strip() for s in silos.split(",") if s.strip()]
    host_names = [h.strip() for h in hosts.split(",") if h.strip()]
    try:
        paths = create_consortium(
            directory,
            federation=federation,
            silos=silo_ids,
            hosts=host_names,
            validity_days=validity_days,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except PKIError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    roster = Roster.loads(paths.roster.read_text(encoding="utf-8"))
    # Only paths, public keys and fingerprints are printed: never key material.
    typer.echo(f"consortium {paths.federation!r} written to {paths.root}")
    typer.echo(f"  roster            {paths.roster}")
    typer.echo(f"  roster sha256     {roster.fingerprint()}")
    typer.echo(f"  consortium key    {roster.consortium_key.hex()} (public, pin this)")
    typer.echo(f"  CA certificate    {paths.ca_cert}")
    typer.echo(
        f"  coordinator       {paths.coordinator_cert.parent}/ (cert.pem, key.pem, audit.key)"
    )
    for silo, silo_paths in paths.silos.items():
        typer.echo(
            f"  silo {silo:<12} {silo_paths.directory}/ (cert.pem, key.pem, signing.key, ca.pem)"
        )
    typer.echo(f"private keys ({len(paths.private_files())} files) are mode 0600 and encrypted.")
    if paths.passphrase_file.is_file():
        typer.echo(
            f"their passphrase is in {paths.passphrase_file}: export "
            f"SECAGG_PASSPHRASE_FILE={paths.passphrase_file.resolve()} to run this consortium"
        )
    typer.secho(_DEV_WARNING, fg=typer.colors.YELLOW, bold=True, err=True)


@pki_app.command(
    "paillier",
    help="Run the trusted-dealer threshold Paillier key ceremony for a consortium (Paillier mode). "
    + _DEV_WARNING,
)
def _pki_paillier(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="The consortium directory.")],
    threshold: Annotated[
        int, typer.Option("--threshold", min=2, help="Silos needed to decrypt an aggregate (t).")
    ],
    key_bits: Annotated[
        int, typer.Option("--key-bits", help="Modulus size: 2048 (default) or 3072.")
    ] = 2048,
    collusion: Annotated[
        int,
        typer.Option(
            "--collusion", min=0, help="Silos that may collude with the coordinator (c < t)."
        ),
    ] = 0,
    min_cohort: Annotated[
        int,
        typer.Option(
            "--min-cohort", min=1, help="Fewest contributions decrypted (min_cohort - c >= 2)."
        ),
    ] = 3,
) -> None:
    from coordinator.errors import PKIError
    from coordinator.pki import ConsortiumPaths
    from coordinator.pki.paillier import create_paillier_keys

    if key_bits not in (2048, 3072):
        raise typer.BadParameter("--key-bits must be 2048 or 3072")
    try:
        public = create_paillier_keys(
            ConsortiumPaths.load(directory),
            threshold=threshold,
            collusion=collusion,
            min_cohort=min_cohort,
            key_bits=key_bits,
        )
    except (PKIError, ValueError, OSError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"threshold Paillier key ({key_bits} bits, t = {threshold}) written: {public}")
    typer.echo(
        "each silo's key share is sealed to that silo in silos/<id>/paillier-share.json (0600)"
    )


@pki_app.command("revoke")
def _pki_revoke(
    ca_dir: Annotated[Path, typer.Argument(metavar="CA_DIR", help="The CA directory.")],
    member: Annotated[str, typer.Option("--id", help="The enrolled member to revoke.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Also copy the new revocation list here.")
    ] = None,
    ca_key: CaKeyOption = None,
) -> None:
    """Revoke a member's certificate: a new CA-signed revocation list (CA_DIR/crl.pem) for the coordinator."""
    from coordinator.errors import PKIError
    from coordinator.pki.enrol import CaPaths, revoke

    try:
        written = revoke(
            ca_dir,
            member,
            out,
            passphrase=_passphrase_unless_token(CaPaths.at(ca_dir).ca_key, ca_key, "the CA keys"),
            ca_key=ca_key,
        )
    except PKIError as exc:
        raise _pki_error(exc) from exc
    typer.echo(
        f"revoked {member!r}: revocation list {written}; copy it over the file serve.toml's "
        f"revocation_list names (the coordinator refuses {member!r} at its next call), and propose a "
        f"roster version with --remove {member}"
    )


roster_app = typer.Typer(
    no_args_is_help=True,
    help="Roster versions: proposed by the CA operator, valid with K of N governor signatures.",
)
pki_app.add_typer(roster_app, name="roster")


def _show_version(version: object) -> None:
    from coordinator.pki.governance import RosterVersion

    assert isinstance(version, RosterVersion)
    typer.echo(
        f"roster version {version.version} of federation {version.federation!r} "
        f"(digest {version.digest()}; previous {version.previous or '-'})"
    )
    for silo, key in version.roster.members.items():
        typer.echo(f"  member {silo:<16} roster key {key.hex()}")
    for governor in version.signatures:
        typer.echo(f"  signed by governor {governor.hex()}")
    if version.governance is not None:
        governors, quorum = version.governance
        typer.echo(
            f"  hands over to {quorum} of {len(governors)} new governors (K of the governors in force sign it):"
        )
        for governor in governors:
            typer.echo(f"    governor {governor.hex()}")


@roster_app.command("propose")
def _pki_roster_propose(
    ca_dir: Annotated[Path, typer.Argument(metavar="CA_DIR", help="The CA directory.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the proposed roster version.")],
    add: Annotated[
        list[str], typer.Option("--add", help="An enrolled silo to add (repeatable).")
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    remove: Annotated[
        list[str], typer.Option("--remove", help="A member to remove (repeatable).")
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    rotate: Annotated[
        list[str],
        typer.Option(
            "--rotate", help="A member whose new roster key `pki sign` recorded (repeatable)."
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    governor: Annotated[
        list[Path],
        typer.Option(
            "--governor",
            help="Hand over to a new governor set: a governor.pub of the new set (repeatable; with --quorum). "
            "K of the governors in force sign this version; the new set governs the next ones.",
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    quorum: Annotated[
        int | None, typer.Option("--quorum", min=1, help="K of the new governor set.")
    ] = None,
) -> None:
    """Propose the next roster version (version 1: every enrolled silo); send it to the governors."""
    from coordinator.errors import PKIError
    from coordinator.pki.enrol import CaPaths, propose

    try:
        passphrase = _passphrase_unless_token(
            CaPaths.at(ca_dir).consortium_key, None, "the CA keys"
        )
        handover = None
        if governor or quorum is not None:
            if not governor or quorum is None:
                raise typer.BadParameter(
                    "a handover needs both --governor (one per key) and --quorum"
                )
            handover = ([_read_governor_key(g) for g in governor], quorum)
        version = propose(
            ca_dir,
            out,
            passphrase=passphrase,
            add=add,
            remove=remove,
            rotate=rotate,
            handover_to=handover,
        )
    except PKIError as exc:
        raise _pki_error(exc) from exc
    _show_version(version)
    typer.echo(f"written to {out}: each governor runs `secagg pki roster sign GOV_DIR {out}`")


@roster_app.command("sign")
def _pki_roster_sign(
    governor_dir: Annotated[
        Path, typer.Argument(metavar="GOV_DIR", help="Your governor directory.")
    ],
    proposal: Annotated[
        Path, typer.Argument(metavar="VERSION", help="The proposed roster version.")
    ],
    yes: Annotated[
        bool, typer.Option("--yes", help="Do not ask: you reviewed the members.")
    ] = False,
    key: GovernorKeyOption = None,
) -> None:
    """Review a proposed roster version and add your governor signature to it (the file is updated)."""
    from coordinator.errors import PKIError
    from coordinator.pki.enrol import sign_roster
    from coordinator.pki.governance import RosterVersion

    try:
        _show_version(RosterVersion.load(proposal))
    except PKIError as exc:
        raise _pki_error(exc) from exc
    if not yes and not typer.confirm("sign this roster version?"):
        typer.echo("not signed")
        raise typer.Exit(code=1)
    try:
        signed = sign_roster(
            governor_dir,
            proposal,
            passphrase=_passphrase_unless_token(
                governor_dir / "governor.key", key, "the governor key"
            ),
            key=key,
        )
    except PKIError as exc:
        raise _pki_error(exc) from exc
    typer.echo(f"signed: {len(signed.signatures)} governor signature(s) in {proposal}")


@roster_app.command("show")
def _pki_roster_show(
    version_file: Annotated[Path, typer.Argument(metavar="VERSION", help="A roster version file.")],
    org: Annotated[
        Path | None,
        typer.Option(
            "--org", help="Check it against this organisation's pins (exit 1 if refused)."
        ),
    ] = None,
) -> None:
    """Show a roster version; with --org, whether that organisation would install it."""
    import json

    from coordinator.errors import PKIError
    from coordinator.pki.enrol import OrgPaths
    from coordinator.pki.governance import RosterVersion, check_extends, governance_pins

    try:
        version = RosterVersion.load(version_file)
        _show_version(version)
        if org is not None:
            paths = OrgPaths.at(org)
            governors, quorum = governance_pins(json.loads(paths.governance.read_text()))
            pinned = RosterVersion.load(paths.roster_version)
            version.verify(
                consortium_key=bytes.fromhex(paths.consortium_public_key.read_text().strip()),
                governors=governors,
                quorum=quorum,
                federation=pinned.federation,
            )
            if pinned.digest() != version.digest():
                check_extends(version, pinned)
            typer.echo(
                f"valid for {org}: {len(version.valid_signers(governors))} of {quorum} required governor "
                f"signatures; extends pinned version {pinned.version}"
            )
    except (PKIError, OSError, ValueError) as exc:
        raise _pki_error(exc) from exc


# --- end pki ----------------------------------------------------------------------------------------------


# --- audit: export, verify and report the tamper-evident ledger --------------------------------------------

audit_app = typer.Typer(
    no_args_is_help=True,
    help="The federation's audit ledger: export a bundle, verify it, and write the regulator report.",
)
app.add_typer(audit_app, name="audit")

_AUDIT_KEY_HELP = (
    "The coordinator's audit public key you trust: 64 hex digits, or a file holding them (e.g. the "
    "consortium's coordinator/audit.pub)."
)
_CONSORTIUM_KEY_HELP = "The consortium public key you trust (64 hex digits or a file); the roster must verify under it."
_ORIGIN_HELP = (
    "The log origin you trust, e.g. secagg/federation/NAME (the checkpoint's first line)."
)
_FEDERATION_HELP = (
    "The federation you audit: the ledger's and the roster's must be it; pins the origin "
    "secagg/federation/NAME unless --origin is given."
)
#: Exit codes of ``secagg audit verify`` and ``secagg audit report`` (also in their --help and README).
EXIT_VERIFIED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNPINNED = 3
EXIT_NO_PDF = 4

_EXIT_CODES = "\n\n".join(
    [
        "Exit codes:",
        f"{EXIT_VERIFIED}  verified against the pinned audit key, consortium key and log origin",
        f"{EXIT_FAILED}  verification failed: the message names the first problem (report: nothing written)",
        f"{EXIT_USAGE}  usage error, e.g. a pin is missing and --unpinned was not given",
        f"{EXIT_UNPINNED}  --unpinned: internally consistent, but not anchored to keys you trust (report: "
        "written, and marked so)",
        f"{EXIT_NO_PDF}  report only: report.html and report.json written, the PDF could not be printed "
        f"({EXIT_UNPINNED} wins when both apply)",
    ]
)
_UNPINNED_HELP = (
    "Run without some pins: what is missing is read from the bundle itself, which proves internal "
    f"consistency only; exits {EXIT_UNPINNED} even if everything checks out."
)


def _hex_key(value: str | None, name: str) -> bytes | None:
    if value is None:
        return None
    text = Path(value).read_text(encoding="utf-8").strip() if Path(value).is_file() else value
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise typer.BadParameter(f"{name} must be 64 hex digits (or a file holding them)")
    return key


def _verified(
    bundle: Path,
    pins: tuple[str | None, str | None, str | None, str | None],
    *,
    checkpoints: list[Path],
    unpinned: bool,
    statements: list[Path] | None = None,
    governance: Path | None = None,
) -> VerificationReport:
    """Verify as both commands do; ``pins``: (audit key, consortium key, origin, federation) options."""
    audit_key, consortium_key, origin, federation = pins
    from audits import VerificationError
    from audits.witness import WitnessStatement
    from coordinator.rounds.audit import verify_bundle_dir
    from secagg import SecAggError

    missing = [
        option
        for option, value in (
            ("--audit-key", audit_key),
            ("--consortium-key", consortium_key),
            ("--origin or --federation", origin or federation),
        )
        if value is None
    ]
    if missing and not unpinned:
        typer.secho(
            f"error: not pinned: {', '.join(missing)}. Verification fails closed: pin them (the demo "
            "prints the command), or pass --unpinned to check internal consistency only "
            f"(exit {EXIT_UNPINNED}).",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=EXIT_USAGE)
    pinned_governance = None if governance is None else _governance_pin(governance)
    try:
        report, warnings = verify_bundle_dir(
            bundle,
            audit_public_key=_hex_key(audit_key, "--audit-key"),
            consortium_public_key=_hex_key(consortium_key, "--consortium-key"),
            origin=origin,
            federation=federation,
            checkpoints=[p.read_text(encoding="utf-8") for p in checkpoints],
            unpinned=unpinned,
            statements=[
                WitnessStatement.loads(p.read_text(encoding="utf-8")) for p in statements or []
            ],
            governance=pinned_governance,
        )
    except (VerificationError, SecAggError, OSError, ValueError) as exc:
        typer.secho(f"FAILED: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=EXIT_FAILED) from exc
    for warning in warnings:
        typer.secho(f"WARNING: {warning}", fg=typer.colors.YELLOW, err=True)
    return report


def _governance_pin(path: Path) -> Governance:
    """The governors and quorum of a ``governance.json`` (a member's or the CA's), or a usage error."""
    import json

    from audits.roster import governance_from_json

    try:
        return governance_from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        _fail(
            f"--governance {path}: {getattr(exc, 'strerror', None) or exc} (give the governance.json "
            "the federation was created with)",
            code=EXIT_USAGE,
        )


_GOVERNANCE_HELP = (
    "governance.json: the governors and quorum the governed federation was created with (the CA's or a "
    "member's copy, confirmed with the governors; a later handover rewrites it). Without it a governed "
    "ledger's governance is read from the ledger itself and the verification is not fully pinned."
)
_Governance = Annotated[
    Path | None, typer.Option("--governance", metavar="FILE", help=_GOVERNANCE_HELP)
]
_AuditKey = Annotated[str | None, typer.Option("--audit-key", help=_AUDIT_KEY_HELP)]
_ConsortiumKey = Annotated[str | None, typer.Option("--consortium-key", help=_CONSORTIUM_KEY_HELP)]
_Origin = Annotated[str | None, typer.Option("--origin", help=_ORIGIN_HELP)]
_Federation = Annotated[str | None, typer.Option("--federation", help=_FEDERATION_HELP)]
_Unpinned = Annotated[bool, typer.Option("--unpinned", help=_UNPINNED_HELP)]
_Checkpoints = Annotated[
    list[Path],
    typer.Option(
        "--checkpoint",
        help="A later signed checkpoint (e.g. from a silo's witness); repeatable. Catches a truncated log.",
    ),
]

_Statements = Annotated[
    list[Path],
    typer.Option(
        "--statement",
        help="A silo's signed witness statement (JSON); repeatable. Its signature is checked against the "
        "roster and its checkpoint against the bundle's log.",
    ),
]


def _pinning_line(report: VerificationReport) -> str:
    anchors = report.anchors
    if anchors.fully_pinned:
        if anchors.governance is not None:
            return "pinned: audit key, consortium key, log origin and roster governance"
        return "pinned: audit key, consortium key and log origin"
    return "NOT PINNED: " + ", ".join(str(a).replace("_", " ") for a in anchors.unpinned)


@audit_app.command("export")
def _audit_export(
    config: Annotated[Path, typer.Option("--config", help="The coordinator's TOML configuration.")],
    out: Annotated[Path, typer.Option("--out", help="New directory for the bundle.")],
) -> None:
    """Write the audit bundle (entries, latest checkpoint, roster, audit public key) from the coordinator's store."""
    from audits import AuditError
    from coordinator.config import ServeConfig
    from coordinator.rounds.audit import export_bundle

    settings = _load_or_exit(ServeConfig.load, config)
    try:
        checkpoint = export_bundle(settings, out)
    except (AuditError, OSError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(
        f"audit bundle of {checkpoint.size} entries written to {out}/ (root {checkpoint.root.hex()})"
    )


@audit_app.command("verify", epilog=_EXIT_CODES)
def _audit_verify(
    bundle: Annotated[Path, typer.Argument(metavar="DIR", help="The audit bundle directory.")],
    audit_key: _AuditKey = None,
    consortium_key: _ConsortiumKey = None,
    origin: _Origin = None,
    federation: _Federation = None,
    checkpoint: _Checkpoints = [],  # noqa: B006 - typer reads the default, never mutates it
    statement: _Statements = [],  # noqa: B006 - typer reads the default, never mutates it
    governance: _Governance = None,
    unpinned: _Unpinned = False,
) -> None:
    """Recompute every hash, signature and epsilon and check completeness; fails closed without pins.

    Pin the coordinator's audit key, the consortium key and the log origin (--origin, or --federation NAME for
    secagg/federation/NAME); the bundle's roster must be the one the ledger's first entry records.
    """
    pins = (audit_key, consortium_key, origin, federation)
    report = _verified(
        bundle,
        pins,
        checkpoints=checkpoint,
        unpinned=unpinned,
        statements=statement,
        governance=governance,
    )
    cp = report.checkpoint
    typer.echo(
        f"{'OK' if report.anchors.fully_pinned else 'CONSISTENT'}: {len(report.entries)} entries of "
        f"federation {report.federation!r} match checkpoint size {cp.size} root {cp.root.hex()}; "
        f"{report.attestations_checked} attestation signatures verified; {report.epsilons_recomputed} "
        f"epsilons recomputed; {report.checkpoints_checked} later checkpoints consistent; every completed "
        f"round complete; {_pinning_line(report)}"
    )
    for note in report.notes:
        typer.echo(f"note: {note}")
    if not report.anchors.fully_pinned:
        raise typer.Exit(code=EXIT_UNPINNED)


@audit_app.command("report", epilog=_EXIT_CODES)
def _audit_report(
    bundle: Annotated[Path, typer.Argument(metavar="DIR", help="The audit bundle directory.")],
    out: Annotated[
        Path, typer.Option("--out", help="Directory for report.html, report.json and report.pdf.")
    ],
    audit_key: _AuditKey = None,
    consortium_key: _ConsortiumKey = None,
    origin: _Origin = None,
    federation: _Federation = None,
    governance: _Governance = None,
    unpinned: _Unpinned = False,
    pdf: Annotated[
        bool | None,
        typer.Option(
            "--pdf/--no-pdf",
            help="Also print report.pdf with headless Chromium. Default: when Chromium is found.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Verify the bundle as `audit verify` does, then write report.html, report.json and report.pdf.

    The report states which keys were pinned, with their fingerprints, and never shows "verified" when they
    were not.
    """
    from audits import ReportError, build_report, find_chromium, write_pdf, write_report

    pins = (audit_key, consortium_key, origin, federation)
    report = _verified(bundle, pins, checkpoints=[], unpinned=unpinned, governance=governance)
    data, html = write_report(build_report(report), out)
    typer.echo(f"report written: {html} and {data}")
    code = EXIT_VERIFIED if report.anchors.fully_pinned else EXIT_UNPINNED
    chromium = find_chromium() if pdf is not False else None
    if pdf is None and chromium is None:
        typer.secho(
            "no PDF: headless Chromium was not found (Debian: apt-get install chromium); "
            "pass --no-pdf to skip it",
            fg=typer.colors.YELLOW,
            err=True,
        )
    elif pdf is not False:
        try:
            typer.echo(f"PDF written: {write_pdf(html, chromium=chromium)}")
        except ReportError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            code = code or EXIT_NO_PDF
    if code == EXIT_UNPINNED:
        typer.secho(
            "the report is marked NOT verified against pinned keys",
            fg=typer.colors.YELLOW,
            err=True,
        )
    if code:
        raise typer.Exit(code=code)


# --- store backup and restore ------------------------------------------------------------------------------

store_app = typer.Typer(
    no_args_is_help=True,
    help="Back up the coordinator's database (rounds, models, audit ledger) and restore it (README: Backup).",
)
app.add_typer(store_app, name="store")


@store_app.command("backup")
def _store_backup(
    config: Annotated[Path, typer.Option("--config", help="The coordinator's TOML configuration.")],
    out: Annotated[Path, typer.Option("--out", help="New file for the backup.")],
) -> None:
    """Write a consistent backup while the coordinator runs (SQLite online backup, or pg_dump)."""
    from coordinator.config import ServeConfig
    from coordinator.errors import StoreError
    from coordinator.store.backup import backup_store

    settings = _load_or_exit(ServeConfig.load, config)
    try:
        backup_store(settings.storage.target, out)
    except StoreError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"backup written to {out}")


@store_app.command("restore")
def _store_restore(
    config: Annotated[
        Path,
        typer.Option(
            "--config", help="The configuration whose (empty) storage receives the backup."
        ),
    ],
    backup: Annotated[Path, typer.Option("--from", help="The backup file.")],
) -> None:
    """Restore a backup into the configuration's storage, which must be empty and not served."""
    from coordinator.config import ServeConfig
    from coordinator.errors import StoreError
    from coordinator.store.backup import restore_store

    settings = _load_or_exit(ServeConfig.load, config)
    try:
        restore_store(backup, settings.storage.target)
    except StoreError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"restored {backup}; the ledger verified; start the coordinator with {config}")


# --- model: the trained global model out of the coordinator's store ---------------------------------------

model_app = typer.Typer(no_args_is_help=True, help="The federation's global models.")
app.add_typer(model_app, name="model")


@model_app.command("export")
def _model_export(
    config: Annotated[Path, typer.Option("--config", help="The coordinator's TOML configuration.")],
    out: Annotated[Path, typer.Option("--out", help="New .npy file for the flat float32 vector.")],
    round_: Annotated[
        int | None,
        typer.Option(
            "--round",
            min=0,
            help="The completed round whose new model to export (default: the last one).",
        ),
    ] = None,
) -> None:
    """Write the global model a completed round produced as a 1-D float32 .npy file.

    Load it into a torch module with ``dp.training.set_flat_params(module, numpy.load(FILE))``.
    """
    import numpy as np

    from coordinator.config import ServeConfig
    from coordinator.errors import CoordinatorError
    from coordinator.rounds.models import global_model
    from coordinator.store import SQLStore

    settings = _load_or_exit(ServeConfig.load, config)
    target = settings.storage.target
    if isinstance(target, Path) and not target.exists():
        _fail(f"no store at {target}: this coordinator has not run yet")
    try:
        store = SQLStore(target)
    except CoordinatorError as exc:
        _fail(str(exc))
    try:
        model = global_model(store, settings.federation, round_)
    except CoordinatorError as exc:
        _fail(str(exc))
    finally:
        store.close()
    try:
        with out.open("xb") as handle:
            np.save(handle, model.vector, allow_pickle=False)
    except FileExistsError:
        _fail(f"{out} already exists: refusing to overwrite it")
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror or exc}")
    typer.echo(
        f"global model of round {model.round} ({model.vector.size} parameters, sha256 "
        f"{model.model_hash.hex()}) written to {out}"
    )


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` (one line, red, on stderr) and exit with ``code``."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


# --- config: commented configuration templates -------------------------------------------------------------

config_app = typer.Typer(
    no_args_is_help=True, help="Configuration files of secagg serve and secagg silo."
)
app.add_typer(config_app, name="config")


class ConfigKind(enum.StrEnum):
    """Which file ``config init`` writes."""

    SERVE = "serve"
    SILO = "silo"


@config_app.command("init")
def _config_init(
    kind: Annotated[
        ConfigKind, typer.Argument(help="serve (the coordinator's serve.toml) or silo (silo.toml).")
    ],
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="Where to write serve.toml or silo.toml.")
    ],
) -> None:
    """Write a commented template of every key (DIR/serve.toml or DIR/silo.toml); never overwrites a file."""
    from coordinator.config import write_config_template

    with _sentences():
        path = write_config_template(kind.value, directory)
    typer.echo(
        f'wrote {path}: replace every "FILL" (paths are relative to {path.parent}), then run '
        f"`secagg {kind.value} --config {path}`"
    )


# --- serve, silo, demo --------------------------------------------------------------------------------------


def _load_or_exit(loader: Callable[[Path], T], path: Path) -> T:
    from coordinator.errors import ConfigError

    try:
        return loader(path)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from exc


#: Exit codes of ``secagg serve`` (also in its --help and the README).
SERVE_COMPLETED = 0
SERVE_ERROR = 1
SERVE_CONFIG = 2
SERVE_LOST_LEAD = 3
SERVE_ROUNDS_ABORTED = 4
SERVE_NO_COHORT = 5
SERVE_INTERRUPTED = 130

_SERVE_EXIT_CODES = "\n\n".join(
    [
        "Exit codes:",
        f"{SERVE_COMPLETED}  every planned round completed (or the federation had already finished)",
        f"{SERVE_ERROR}  a runtime error (the message says what to do; --debug shows the traceback)",
        f"{SERVE_CONFIG}  the configuration does not load",
        f"{SERVE_LOST_LEAD}  lost the lock on the store (another coordinator leads now); restart to stand by",
        f"{SERVE_ROUNDS_ABORTED}  every planned round ran, but some were aborted (the message says why)",
        f"{SERVE_NO_COHORT}  fewer than min_cohort silos joined before the join deadline: no round opened",
        f"{SERVE_INTERRUPTED}  interrupted (Ctrl-C); the open round is recorded as aborted on the next start",
    ]
)


def _federation_summary(records: list[Any]) -> tuple[int, list[Any]]:
    """Completed rounds, and aborted ones not interrupted by a restart (those are no failure of the study)."""
    from coordinator.common import RoundStatus
    from coordinator.rounds.driver import RESTART_REASON

    completed = sum(r.status is RoundStatus.COMPLETED for r in records)
    aborted = [r for r in records if r.status is RoundStatus.ABORTED and r.reason != RESTART_REASON]
    return completed, aborted


def _status_lines(log_format: LogFormat) -> Callable[..., None]:
    """How ``secagg serve`` says what it does (listening, finished, why it failed): plain lines on stderr, or with
    ``--log-format json`` log events, so a log collector parsing stderr as JSON lines meets nothing else."""
    if log_format is not LogFormat.JSON:

        def echo(message: str, *, error: bool = False) -> None:
            typer.secho(message, fg=typer.colors.RED if error else None, err=True)

        return echo
    status = logging.getLogger("coordinator.serve")

    def event(message: str, *, error: bool = False) -> None:
        (status.error if error else status.info)(message)

    return event


@app.command("serve", epilog=_SERVE_EXIT_CODES)
def _serve(
    config: Annotated[Path, typer.Option("--config", help="The coordinator's TOML configuration.")],
    log_level: LogLevelOption = LogLevel.INFO,
    log_format: LogFormatOption = LogFormat.CONSOLE,
) -> None:
    """Run the coordinator until every planned round has run."""
    from coordinator.config import ServeConfig
    from coordinator.server.app import start_coordinator

    configure_logging(level=log_level.value, fmt=log_format.value)
    settings = _load_or_exit(ServeConfig.load, config)
    say = _status_lines(log_format)
    try:
        with _sentences():  # e.g. another coordinator on this store, or the port is taken
            coordinator = start_coordinator(settings)
    except KeyboardInterrupt:  # while standing by ([storage] standby = true)
        say("interrupted while starting (or standing by); the store lock is released")
        raise typer.Exit(code=130) from None
    federation, planned = settings.federation, settings.rounds.count
    if coordinator.service.finished:
        completed, aborted = _federation_summary(coordinator.store.rounds(federation))
        coordinator.stop(grace=0)
        say(
            f"federation {federation!r} has already finished: all {planned} planned rounds have run "
            f"({completed} completed, {len(aborted)} aborted); nothing to serve. Export the model with `secagg model export`, or "
            "start a new study under a new federation id and storage file."
        )
        return
    say(
        f"coordinator for {federation!r} listening on port {coordinator.port}; round 0 opens once "
        f"{settings.rounds.min_cohort} silos have joined (join deadline {settings.deadlines.join:g} s)"
    )
    signal.signal(signal.SIGTERM, lambda *_: coordinator.service.stop())
    code = SERVE_COMPLETED
    try:
        coordinator.service.wait_finished()
        shortfall = coordinator.service.cohort_shortfall
        if shortfall is not None:
            say(
                f"error: no round opened: {shortfall}. Start the silos (`secagg silo --config ...`) and "
                "run `secagg serve` again, or raise [deadlines] join.",
                error=True,
            )
            code = SERVE_NO_COHORT
        elif coordinator.service.finished:
            time.sleep(2.0)  # let silos fetch the last result before the port closes
            completed, aborted = _federation_summary(coordinator.store.rounds(federation))
            if aborted:
                say(
                    f"error: {len(aborted)} of {planned} rounds were aborted ({completed} completed); "
                    f"last: round {aborted[-1].round}: {aborted[-1].reason}",
                    error=True,
                )
                code = SERVE_ROUNDS_ABORTED
            else:
                say(f"federation {federation!r} finished: {completed} rounds completed")
    except KeyboardInterrupt:
        say("interrupted: the open round will be recorded as aborted on the next start")
        code = SERVE_INTERRUPTED
    finally:
        coordinator.stop()
    if code:
        raise typer.Exit(code=code)


@app.command("silo")
def _silo(
    config: Annotated[Path, typer.Option("--config", help="The silo's TOML configuration.")],
    events: Annotated[
        bool, typer.Option("--events", help="Print machine-readable progress lines.")
    ] = False,
    log_level: LogLevelOption = LogLevel.WARNING,
    log_format: LogFormatOption = LogFormat.CONSOLE,
) -> None:
    """Run a silo: the task its [task] entry names (your model and data), or the built-in example, with DP-SGD."""
    from coordinator import modes
    from coordinator.config import SiloConfig

    configure_logging(level=log_level.value, fmt=log_format.value)
    settings = _load_or_exit(SiloConfig.load, config)
    with _sentences():
        run = modes.load(settings.mode, "silo")
        summaries = run(settings, events=events)
    if not events:
        for summary in summaries:
            typer.echo(
                f"round {summary['round']}: {summary['status']}  epsilon spent {summary['epsilon']:.3f} "
                f"of {summary['budget']:g} (delta {summary['delta']:g}) {summary['reason']}"
            )


@app.command("demo")
def _demo(
    silos: Annotated[
        int, typer.Option("--silos", min=3, max=6, help="Number of hospital silos.")
    ] = 3,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Training rounds.")] = 5,
    out: Annotated[
        Path | None, typer.Option("--out", help="New directory for every output.")
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="Aggregation: 'masking' (pairwise masks) or 'paillier' (threshold Paillier).",
        ),
    ] = "masking",
    silo_dp: Annotated[
        bool,
        typer.Option(
            "--silo-dp",
            help="Also add silo-level distributed DP (Skellam noise inside each silo, before masking).",
        ),
    ] = False,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="A postgresql:// URL of an empty database for the coordinator (default: SQLite in --out).",
        ),
    ] = None,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            "--log-level",
            help="Least severe event written to coordinator.log and silo-<id>.log in --out.",
        ),
    ] = LogLevel.INFO,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format", help="The log files as console text or one JSON object per line."
        ),
    ] = LogFormat.JSON,
) -> None:
    """The main job on embedded defaults: a throwaway consortium, a coordinator and hospital silos on loopback."""
    from coordinator.demo import DemoOptions, run_demo

    out = out or Path(f"secagg-demo-{time.strftime('%Y%m%d-%H%M%S')}")
    raise typer.Exit(
        code=run_demo(
            DemoOptions(
                silos=silos,
                rounds=rounds,
                out=out,
                silo_dp=silo_dp,
                mode=mode,
                store=store,
                log_level=log_level.value,
                log_format=log_format.value,
            )
        )
    )


def main() -> None:
    """Console-script entry point: every command's runtime failure ends as one line (:func:`_sentences`).

    Commands catch what they expect with their own advice; this catches the rest (e.g. a missing passphrase
    while ``audit export`` opens the audit key), so no command shows a traceback without ``--debug``.
    """
    try:
        with _sentences():
            app()
    except typer.Exit as done:  # raised by _fail outside click's own handling
        sys.exit(done.exit_code)


if __name__ == "__main__":
    main()
