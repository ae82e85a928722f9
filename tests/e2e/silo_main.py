"""A silo as a separate process, for end-to-end tests: ``python -m tests.e2e.silo_main --pki DIR --silo ID ...``.

Without ``--pause-before`` it runs the real SDK (``Silo.run``) with exactly representable updates derived from
``--seed`` and the round number, and prints one JSON report per round on stdout. With ``--pause-before STAGE``
it drives the protocol by hand up to that stage, prints ``PAUSED <stage>`` and blocks until it is killed; with
``--upload-chunks K`` (and ``--pause-before consistency_check``) it stops in the middle of its masked-input
stream after K chunks instead, so that killing it breaks the stream.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from coordinator.pki import ConsortiumPaths
from coordinator.proto.v1 import coordinator_pb2 as pb
from secagg import Stage
from tests.e2e.harness import Consortium, ManualSilo, exact, integer_update


def _pause(what: str) -> None:
    print(f"PAUSED {what}", flush=True)
    threading.Event().wait()  # until SIGKILL


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument("--silo", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--length", type=int, required=True)
    parser.add_argument("--pause-before", choices=[s.value for s in Stage])
    parser.add_argument("--upload-chunks", type=int)
    args = parser.parse_args(argv)
    consortium = Consortium(ConsortiumPaths.load(args.pki))

    if args.pause_before is None:
        with consortium.sdk(args.silo, args.address) as client:
            for report in client.run(
                lambda ctx: exact(integer_update(args.seed + ctx.round, args.length))
            ):
                print(
                    json.dumps(
                        {
                            "round": report.round,
                            "status": report.status.value,
                            "survivors": list(report.survivors),
                            "dropped": list(report.dropped),
                            "new_model_hash": report.new_model_hash.hex(),
                        }
                    ),
                    flush=True,
                )
        return 0

    silo = ManualSilo(consortium, args.silo, args.address)
    update = exact(integer_update(args.seed, args.length))
    if args.upload_chunks is not None:
        silo.advertise()
        silo.share_keys()
        masked = silo.mask(update)

        def half() -> Iterator[pb.MaskedChunk]:
            for i, chunk in enumerate(silo.chunks(masked, chunk_words=256)):
                if i == args.upload_chunks:
                    _pause("masked_input")
                yield chunk

        silo.stub.UploadMaskedInput(half())
        return 1  # unreachable: the process is killed mid-stream
    silo.run(update, stop_before=Stage(args.pause_before))
    _pause(args.pause_before)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
