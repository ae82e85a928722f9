"""The ``secagg`` command line: one entry point for operators, silos and auditors."""

from __future__ import annotations

from importlib.metadata import version

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"secagg {version('secagg')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Privacy-first secure aggregation for cross-silo federated learning."""


def main() -> None:
    """Console-script entry point."""
    app()
