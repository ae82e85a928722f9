"""Regenerate the gRPC stubs in coordinator/proto/v1 from protos/ (or, with --check, fail on drift).

Usage: python scripts/protoc.py [--check]
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "coordinator" / "proto" / "v1"
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(target: Path) -> list[Path]:
    sources = sorted(PROTOS.rglob("*.proto"))
    if not sources:
        return []
    include = str(Path(protoc.__file__).parent / "_proto")
    # protoc-gen-mypy lives next to this interpreter (the project's virtualenv)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={target}",
        f"--grpc_python_out={target}",
        f"--mypy_out={target}",
        f"--mypy_grpc_out={target}",
        *map(str, sources),
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    return sorted(p for p in target.rglob("*") if p.name.endswith(GENERATED))


def main() -> None:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        rel = {p.relative_to(Path(tmp) / "coordinator" / "proto" / "v1") for p in produced}
        existing = {p.relative_to(OUT) for p in OUT.iterdir() if p.name.endswith(GENERATED)}
        if check:
            drift = sorted(str(r) for r in rel ^ existing) + sorted(
                str(r)
                for r in rel & existing
                if not filecmp.cmp(Path(tmp) / "coordinator/proto/v1" / r, OUT / r, shallow=False)
            )
            if drift:
                sys.exit(
                    f"generated protobuf code is out of date ({', '.join(drift)}): run `make proto`"
                )
            print(f"protobuf stubs up to date ({len(rel)} files)")
            return
        for r in existing - rel:
            (OUT / r).unlink()
        for r in rel:
            shutil.copyfile(Path(tmp) / "coordinator/proto/v1" / r, OUT / r)
        print(f"wrote {len(rel)} files to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
