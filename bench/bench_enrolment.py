"""Key custody and enrolment benchmark: what encryption at rest costs a key load, and what enrolment costs.

Rows (medians of ``--repeat`` runs, the load average next to each):

- loading a TLS key (ECDSA P-256) and a roster key (Ed25519) from encrypted PKCS#8 (``BestAvailableEncryption``,
  through :func:`coordinator.pki.load_private_key`, with the owner-only check), against the baseline of the
  same key unencrypted parsed by ``cryptography`` directly, in the same run;
- one organisation's ``request`` + the CA's ``read_request`` (proofs checked) + ``issue`` + ``install``;
- a whole development consortium (``create_consortium``) of 3 and 10 silos, every step included.

Run ``python bench/bench_enrolment.py`` (seconds) or ``--repeat 3`` for a quicker look.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.pki import create_consortium, load_private_key
from coordinator.pki.custody import write_private_key
from coordinator.pki.enrol import ca_init, governor_init, install, issue, read_request, request

PASSPHRASE = b"benchmark passphrase, 256 bits of it in production"


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    repeat = args.repeat
    print(f"enrolment benchmark: {os.cpu_count()} CPUs, median of {repeat} runs")
    print(f"{'what':<58} {'time':>10} {'ratio':>8} {'load':>6}")
    with tempfile.TemporaryDirectory(prefix="bench-enrolment-") as tmp:
        root = Path(tmp)
        for name, key in (
            ("TLS key, ECDSA P-256", ec.generate_private_key(ec.SECP256R1())),
            ("roster key, Ed25519", Ed25519PrivateKey.generate()),
        ):
            path = root / f"{name.split(',')[0].replace(' ', '-')}.key"
            write_private_key(path, key, PASSPHRASE)
            plain = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            runs = repeat * 20  # single loads are sub-millisecond
            base = median_seconds(lambda p=plain: serialization.load_pem_private_key(p, None), runs)
            enc = median_seconds(lambda p=path: load_private_key(p, PASSPHRASE), runs)
            print(
                f"{'load ' + name + ', unencrypted (baseline)':<58} {base * 1e3:>8.3f}ms {1:>7.1f}x {load():>6}"
            )
            print(
                f"{'load ' + name + ', encrypted + 0600 check':<58} {enc * 1e3:>8.3f}ms "
                f"{enc / base:>7.1f}x {load():>6}"
            )

        governor = governor_init(root / "gov", passphrase=PASSPHRASE).read_text().strip()
        ca = ca_init(
            root / "ca",
            federation="bench",
            governors=[bytes.fromhex(governor)],
            quorum=1,
            passphrase=PASSPHRASE,
        )
        counter = iter(range(10**6))

        def enrol_one() -> None:
            n = next(counter)
            org, _ = request(
                root / f"org-{n}",
                member=f"silo-{n}",
                role="silo",
                federation="bench",
                passphrase=PASSPHRASE,
            )
            checked = read_request(ca.directory, org.request)
            install(
                org.directory,
                issue(ca.directory, checked, root / f"issued-{n}.json", passphrase=PASSPHRASE),
            )

        one = median_seconds(enrol_one, repeat)
        print(
            f"{'one silo: request + checked sign + install':<58} {one * 1e3:>8.1f}ms {'':>8} {load():>6}"
        )
        for silos in (3, 10):
            names = [f"s{i}" for i in range(silos)]
            it = iter(range(10**6))
            took = median_seconds(
                lambda names=names, it=it, silos=silos: create_consortium(
                    root / f"dev-{silos}-{next(it)}",
                    federation="bench",
                    silos=names,
                    passphrase=PASSPHRASE,
                ),
                max(1, repeat // 3),
            )
            print(
                f"{f'development consortium, {silos} silos (pki init)':<58} {took * 1e3:>8.1f}ms "
                f"{took / one:>7.1f}x {load():>6}"
            )
    print("ratio: vs the unencrypted load (key rows), vs one silo's enrolment (consortium rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
