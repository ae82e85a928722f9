"""The public surface of ``secagg``: a sorted, importable ``__all__``, and no heavy or forbidden imports."""

from __future__ import annotations

import json
import subprocess
import sys

import secagg


def isort_key(name: str) -> tuple[int, str]:
    """isort-style order (the project's rule, see RUF022 in pyproject): CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def test_all_is_sorted_unique_and_importable() -> None:
    names = list(secagg.__all__)
    assert names == sorted(names, key=isort_key)
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(secagg, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from secagg import *", namespace)  # what a user's star-import gets
    assert set(names) <= set(namespace)


def test_every_public_exception_derives_from_the_package_root() -> None:
    for name in secagg.__all__:
        obj = getattr(secagg, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, secagg.SecAggError), name


def test_importing_secagg_pulls_in_no_grpc_torch_or_io_framework() -> None:
    code = (
        "import json, sys; import secagg; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    loaded = set(json.loads(out.stdout))
    forbidden = {"grpc", "torch", "opacus", "sqlite3", "dp", "coordinator", "audits", "google"}
    assert not loaded & forbidden, loaded & forbidden


def test_importing_secagg_leaves_paillier_mode_and_its_extra_unloaded() -> None:
    code = "import json, sys; import secagg; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    loaded = json.loads(out.stdout)
    paillier = [
        m
        for m in loaded
        if m.startswith(("gmpy2", "phe", "secagg.paillier", "secagg.hazmat.paillier"))
    ]
    assert not paillier, paillier


def test_repr_of_secret_holding_objects_hides_the_secrets() -> None:
    from tests.secagg.harness import make_config, make_federation, run_to_consistency

    fed = make_federation(3)
    tr = run_to_consistency(fed, make_config(fed, length=4))
    survivors = sorted(tr.clients)
    sigs = [tr.clients[s].sign_survivors(survivors) for s in survivors]
    request = secagg.UnmaskRequest(tuple(survivors), (), tuple(sigs))
    response = tr.clients[survivors[0]].unmask(request)
    texts = [
        repr(response),
        repr(tr.clients[survivors[1]]),
        repr(tr.inbox[survivors[0]][0]),
        repr(sigs[0]),
        repr(fed.roster),
    ]
    secrets = [
        *response.self_mask_shares.values(),
        tr.inbox[survivors[0]][0].ciphertext,
        sigs[0].signature,
    ]
    for text in texts:
        for secret in secrets:
            assert secret.hex() not in text
            assert repr(secret) not in text
