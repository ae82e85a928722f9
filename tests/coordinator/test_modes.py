"""Optional means optional: the masking path runs without the ``paillier`` extra (``phe``, ``gmpy2``).

Each check runs in a fresh interpreter whose import system refuses ``phe``, ``gmpy2`` and ``secagg.paillier``
(as on a machine where ``pip install secagg`` left the extra out). The positive control shows the block
bites: the Paillier plug-in cannot load there, and the registry says which extra is missing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coordinator import modes
from coordinator.errors import ConfigError

BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("phe", "gmpy2") or name.startswith("secagg.paillier") \\
                    or name.startswith("secagg.hazmat.paillier"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    """
)


def _run(body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "blocked.py"
    script.write_text(BLOCK + textwrap.dedent(body), encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_serve_help_runs_without_the_paillier_extra(tmp_path: Path) -> None:
    result = _run(
        """
        import sys
        from coordinator.cli import main
        sys.argv = ["secagg", "serve", "--help"]
        try:
            main()
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        leaked = [m for m in sys.modules if m.split(".")[0] in ("phe", "gmpy2")]
        assert not leaked, leaked
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_masking_config_loads_and_its_driver_and_server_resolve_without_the_extra(
    tmp_path: Path,
) -> None:
    result = _run(
        """
        import sys
        from pathlib import Path
        from coordinator import modes
        from coordinator.config import ServeConfig, write_demo_configs
        from coordinator.pki import create_consortium

        out = Path(sys.argv[1])
        consortium = create_consortium(out / "pki", federation="f", silos=["a", "b", "c"])
        serve, _ = write_demo_configs(
            consortium, out / "cfg", rounds=1, model_size=8, coordinator="127.0.0.1:1"
        )
        config = ServeConfig.load(serve)
        assert config.mode == "masking"
        modes.load("masking", "rounds"), modes.load("masking", "server"), modes.load("masking", "silo")
        leaked = [m for m in sys.modules if m.split(".")[0] in ("phe", "gmpy2")
                  or m.startswith("secagg.paillier")]
        assert not leaked, leaked
        try:
            modes.load("paillier", "rounds")
        except Exception as exc:  # the positive control: the block is real
            print("REFUSED:", type(exc).__name__, exc)
        else:
            raise AssertionError("the Paillier plug-in loaded although its extra is blocked")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "REFUSED: ConfigError" in result.stdout
    assert "pip install 'secagg[paillier]'" in result.stdout


def test_the_registry_names_unknown_modes() -> None:
    with pytest.raises(
        ConfigError, match="unknown aggregation mode 'sum'; known: masking, paillier"
    ):
        modes.load("sum", "rounds")


def test_every_registered_plug_in_resolves_here() -> None:
    for name in modes.MODES:
        for part in ("rounds", "server", "silo"):
            assert callable(modes.load(name, part))  # type: ignore[arg-type]
