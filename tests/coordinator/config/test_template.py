"""``secagg config init``: a commented template of every key that loads as is once its FILL values are filled."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.config import ServeConfig, SiloConfig, config_template, json_schema
from coordinator.config.template import FILL
from coordinator.errors import ConfigError
from coordinator.pki import ConsortiumPaths, create_consortium

Kind = Literal["serve", "silo"]
FEDERATION = "template-fed"
SILOS = ("silo-a", "silo-b", "silo-c")


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> ConsortiumPaths:
    """Real enrolment material: a development consortium (real keys, certificates and signed roster)."""
    return create_consortium(
        tmp_path_factory.mktemp("template") / "pki", federation=FEDERATION, silos=SILOS
    )


def fill(template: str, values: Mapping[tuple[str, ...], object]) -> str:
    """Replace each live ``key = "FILL"`` line with ``values[(table..., key)]``; every value must be used."""
    table: tuple[str, ...] = ()
    unused = dict(values)
    out = []
    for line in template.splitlines():
        header = re.fullmatch(r"\[([\w.]+)\]", line)
        if header:
            table = tuple(header.group(1).split("."))
        placeholder = re.fullmatch(rf'(\w+) = "{FILL}"', line)
        if placeholder:
            key = (*table, placeholder.group(1))
            line = f"{placeholder.group(1)} = {json.dumps(unused.pop(key))}"
        out.append(line)
    assert not unused, f"not FILL keys in the template: {sorted(unused)}"
    text = "\n".join(out) + "\n"
    assert not [line for line in text.splitlines() if FILL in line and not line.startswith("#")], (
        "a FILL value is left"
    )
    return text


def write(kind: Kind, directory: Path) -> Path:
    result = CliRunner().invoke(app, ["config", "init", kind, str(directory)])
    assert result.exit_code == 0, result.output
    path = directory / f"{kind}.toml"
    assert f"wrote {path}" in result.output
    return path


def test_a_serve_template_filled_with_real_material_loads(
    tmp_path: Path, consortium: ConsortiumPaths
) -> None:
    path = write("serve", tmp_path)
    model = tmp_path / "initial.npy"
    np.save(model, np.zeros(12, dtype=np.float32))
    values = {
        ("federation",): FEDERATION,
        ("roster",): str(consortium.roster),
        ("consortium_public_key",): consortium.consortium_public_key.read_text().strip(),
        ("audit_key",): str(consortium.audit_key),
        ("model", "initial_model"): "initial.npy",  # relative to the file
        ("tls", "ca"): str(consortium.ca_cert),
        ("tls", "cert"): str(consortium.coordinator_cert),
        ("tls", "key"): str(consortium.coordinator_key),
    }
    path.write_text(fill(path.read_text(), values))
    config = ServeConfig.load(path)
    assert config.federation == FEDERATION
    assert config.model.initial_model == model
    assert config.rounds.count == 10
    assert config.storage.target == tmp_path / "coordinator.sqlite"


def test_a_silo_template_filled_with_real_material_loads(
    tmp_path: Path, consortium: ConsortiumPaths
) -> None:
    path = write("silo", tmp_path)
    silo = consortium.silos["silo-b"]
    values = {
        ("federation",): FEDERATION,
        ("roster",): str(consortium.roster),
        ("consortium_public_key",): consortium.consortium_public_key.read_text().strip(),
        ("silo",): "silo-b",
        ("coordinator",): "localhost:50051",
        ("signing_key",): str(silo.signing_key),
        ("state_dir",): "state",
        ("tls", "ca"): str(silo.ca_cert),
        ("tls", "cert"): str(silo.cert),
        ("tls", "key"): str(silo.key),
    }
    path.write_text(fill(path.read_text(), values))
    config = SiloConfig.load(path)
    assert config.silo == "silo-b"
    assert config.state_dir == tmp_path / "state"


@pytest.mark.parametrize("kind", ["serve", "silo"])
def test_an_unfilled_template_is_refused_with_one_line_naming_a_key(
    tmp_path: Path, kind: Kind
) -> None:
    """Positive control for the FILL markers: the template as written does not run by accident."""
    path = write(kind, tmp_path)
    loader = ServeConfig if kind == "serve" else SiloConfig
    with pytest.raises(ConfigError) as exc:
        loader.load(path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(str(path))


def _keys(
    root: dict[str, Any], table: dict[str, Any], path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    for key, prop in table["properties"].items():
        ref = prop.get("$ref")
        if ref is None:
            yield (*path, key), prop
        else:
            yield from _keys(root, root["$defs"][ref.rsplit("/", 1)[-1]], (*path, key))


@pytest.mark.parametrize("kind", ["serve", "silo"])
def test_the_template_lists_every_key_with_its_doc_and_parses_as_toml(kind: Kind) -> None:
    template = config_template(kind)
    tomllib.loads(template)  # the live lines are valid TOML
    # Uncommenting everything still parses: each commented line is a valid key or table line.
    uncommented = "\n".join(
        line[2:] if re.match(r"# (\[[\w.]+\]|\w+ = )", line) else line
        for line in template.splitlines()
    )
    everything = tomllib.loads(uncommented)
    comments = " ".join(line[2:] for line in template.splitlines() if line.startswith("# ")).split()
    prose = " ".join(comments)
    schema = json_schema(kind)
    for path, prop in _keys(schema, schema, ()):
        node: Any = everything
        for part in path:
            assert part in node, f"{'.'.join(path)} is missing from the {kind} template"
            node = node[part]
        first_words = " ".join(prop["description"].split()[:6])
        assert first_words in prose, f"{'.'.join(path)}: its description is not in the template"


def test_config_init_refuses_to_overwrite_an_existing_file(tmp_path: Path) -> None:
    existing = tmp_path / "serve.toml"
    existing.write_text("# mine\n")
    result = CliRunner().invoke(app, ["config", "init", "serve", str(tmp_path)])
    assert result.exit_code == 1
    assert "already exists: refusing to overwrite it" in result.output
    assert existing.read_text() == "# mine\n"
