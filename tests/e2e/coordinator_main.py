"""A coordinator as a separate process, for the restart tests: ``python -m tests.e2e.coordinator_main ...``.

Builds a :class:`MaskingRounds` on a SQLite file and an mTLS gRPC server on 127.0.0.1 port 0, prints
``PORT <n>`` on stdout once it serves, and runs until it is killed. Restarting it with the same arguments on
the same file is a coordinator restart (the settings must match the stored federation's).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from coordinator.pki import ConsortiumPaths
from tests.e2e.harness import Consortium, running_coordinator, settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--length", type=int, required=True)
    parser.add_argument("--threshold", type=int, required=True)
    parser.add_argument("--min-cohort", type=int, required=True)
    args = parser.parse_args(argv)
    consortium = Consortium(ConsortiumPaths.load(args.pki))
    config = settings(
        n=len(consortium.silos),
        rounds=args.rounds,
        length=args.length,
        threshold=args.threshold,
        min_cohort=args.min_cohort,
    )
    with running_coordinator(consortium, args.db, config) as coordinator:
        print(f"PORT {coordinator.port}", flush=True)
        threading.Event().wait()  # serve until killed
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
