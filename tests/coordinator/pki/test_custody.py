"""Key custody: keys are encrypted and owner-only on disk; loading refuses anything else with one line."""

from __future__ import annotations

import getpass
import stat
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.errors import PKIError
from coordinator.pki import PASSPHRASE_ENV, load_private_key, read_passphrase, tls_key_pem
from coordinator.pki.custody import PBKDF2_ITERATIONS, encrypt_private_key, write_private_key

PASSPHRASE = b"correct horse battery staple"


def one_line(exc: pytest.ExceptionInfo[PKIError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and message, message
    return message


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key.pem"
    write_private_key(path, ec.generate_private_key(ec.SECP256R1()), PASSPHRASE)
    return path


def test_a_key_is_written_encrypted_and_0600_and_loads_with_its_passphrase(key_file: Path) -> None:
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert isinstance(load_private_key(key_file, PASSPHRASE), ec.EllipticCurvePrivateKey)
    # gRPC's credentials get the decrypted key in memory; the file stays encrypted.
    pem = tls_key_pem(key_file, PASSPHRASE)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (
        serialization.load_pem_private_key(pem, None).public_key()
        == load_private_key(key_file, PASSPHRASE).public_key()
    )


def test_a_wrong_passphrase_is_one_line_saying_what_to_check(key_file: Path) -> None:
    with pytest.raises(PKIError) as exc:
        load_private_key(key_file, b"not the passphrase")
    message = one_line(exc)
    assert message.startswith(f"wrong passphrase for {key_file}")
    assert PASSPHRASE_ENV in message


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_readable_by_others_is_refused_before_it_is_read(key_file: Path, mode: int) -> None:
    key_file.chmod(mode)
    with pytest.raises(PKIError) as exc:
        load_private_key(key_file, PASSPHRASE)
    message = one_line(exc)
    assert "readable by other users" in message and f"chmod 600 {key_file}" in message


def test_an_unencrypted_key_is_refused_with_how_to_encrypt_it(tmp_path: Path) -> None:
    path = tmp_path / "plain.key"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    with pytest.raises(PKIError) as exc:
        load_private_key(path, PASSPHRASE)
    message = one_line(exc)
    assert "is not encrypted" in message and "openssl pkcs8 -topk8" in message
    assert "BEGIN" not in message


def test_the_passphrase_comes_from_the_file_the_environment_names(
    tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "passphrase"
    secret.write_bytes(PASSPHRASE + b"\n")
    secret.chmod(0o600)
    monkeypatch.setenv(PASSPHRASE_ENV, str(secret))
    assert read_passphrase() == PASSPHRASE
    assert isinstance(load_private_key(key_file), ec.EllipticCurvePrivateKey)
    secret.chmod(0o644)
    with pytest.raises(PKIError) as exc:
        read_passphrase()
    assert "passphrase file" in one_line(exc) and "chmod 600" in str(exc.value)
    secret.write_bytes(b"")
    secret.chmod(0o600)
    with pytest.raises(PKIError, match="is empty"):
        read_passphrase()
    monkeypatch.setenv(PASSPHRASE_ENV, str(tmp_path / "missing"))
    with pytest.raises(PKIError, match="cannot read passphrase file"):
        read_passphrase()


def test_without_a_file_or_a_terminal_the_error_says_how_to_give_the_passphrase(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    with pytest.raises(PKIError) as exc:
        read_passphrase(purpose="the CA keys")
    message = one_line(exc)
    assert f"set {PASSPHRASE_ENV}" in message and "the CA keys" in message


def test_a_prompted_new_passphrase_is_asked_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    typed = iter(["a long passphrase", "a long passphrase", "a long passphrase", "a typo"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt: next(typed))
    assert read_passphrase(confirm=True) == b"a long passphrase"
    with pytest.raises(PKIError, match="the two passphrases differ"):
        read_passphrase(confirm=True)
    typed = iter(["short"])
    with pytest.raises(PKIError, match="at least 8 characters"):
        read_passphrase(confirm=True)


def _kdf(path: Path) -> dict[str, object]:
    """The PBES2 parameters of an encrypted PKCS#8 PEM file, parsed independently with asn1crypto."""
    from asn1crypto import keys as asn1_keys
    from asn1crypto import pem as asn1_pem

    _, _, der = asn1_pem.unarmor(path.read_bytes())
    algorithm = asn1_keys.EncryptedPrivateKeyInfo.load(der)["encryption_algorithm"]
    params = algorithm["parameters"]
    kdf = params["key_derivation_func"]
    return {
        "scheme": algorithm["algorithm"].native,
        "kdf": kdf["algorithm"].native,
        "prf": kdf["parameters"]["prf"]["algorithm"].native,
        "iterations": kdf["parameters"]["iteration_count"].native,
        "salt": kdf["parameters"]["salt"].native,
        "cipher": params["encryption_scheme"]["algorithm"].native,
    }


def test_a_key_file_uses_pbes2_pbkdf2_sha256_at_owasp_2023_strength(tmp_path: Path) -> None:
    first, second = tmp_path / "a.key", tmp_path / "b.key"
    write_private_key(first, Ed25519PrivateKey.generate(), PASSPHRASE)
    write_private_key(second, Ed25519PrivateKey.generate(), PASSPHRASE)
    kdf = _kdf(first)
    assert (
        PBKDF2_ITERATIONS == 600_000
    )  # OWASP Password Storage Cheat Sheet (2023), PBKDF2-HMAC-SHA256
    assert {k: v for k, v in kdf.items() if k != "salt"} == {
        "scheme": "pbes2",
        "kdf": "pbkdf2",
        "prf": "sha256",
        "iterations": 600_000,
        "cipher": "aes256_cbc",
    }
    assert isinstance(kdf["salt"], bytes) and len(kdf["salt"]) == 16
    assert kdf["salt"] != _kdf(second)["salt"]  # a fresh random salt per file


def test_the_baseline_library_default_is_the_weak_kdf_this_replaces(tmp_path: Path) -> None:
    """Positive control: cryptography's BestAvailableEncryption (what earlier versions wrote) uses 2,048."""
    old = tmp_path / "old.key"
    old.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE),
        )
    )
    old.chmod(0o600)
    assert _kdf(old)["iterations"] < PBKDF2_ITERATIONS


def test_a_key_file_written_by_earlier_versions_still_loads(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    old = tmp_path / "old.key"
    old.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE),
        )
    )
    old.chmod(0o600)
    assert load_private_key(old, PASSPHRASE).public_key() == key.public_key()


def test_openssl_reads_the_key_file_and_a_wrong_passphrase_still_fails(key_file: Path) -> None:
    """Interoperability: the PBES2 structure assembled here is what OpenSSL's PKCS#8 reader expects."""
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("SKIPPED LOUDLY: the openssl command is not installed (Debian package openssl)")
    ok = subprocess.run(
        [openssl, "pkey", "-in", str(key_file), "-passin", "stdin", "-noout"],
        input=PASSPHRASE + b"\n",
        capture_output=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [openssl, "pkey", "-in", str(key_file), "-passin", "stdin", "-noout"],
        input=b"wrong\n",
        capture_output=True,
        check=False,
    )
    assert bad.returncode != 0


def test_fewer_iterations_than_the_floor_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 600000"):
        encrypt_private_key(Ed25519PrivateKey.generate(), PASSPHRASE, iterations=2048)
