"""Report JSON content, the HTML and its PDF rendered by a real headless Chromium."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from audits import (
    Anchor,
    EventKind,
    build_report,
    render_html,
    verify_bundle,
    write_bundle,
    write_pdf,
    write_report,
)
from audits.report import REPORT_SCHEMA

from .conftest import (
    ORIGIN,
    Federation,
    build_federation,
    history_of,
    rdp_epsilon,
    roster_fingerprint,
)

REPO = Path(__file__).resolve().parents[2]
CONSORTIUM_KEY = bytes(range(32))
GENERATED_AT = "2025-03-02T09:30:00.000000Z"


def _report(federation: Federation, bundle: Path, *, pinned: bool = True) -> dict[str, Any]:
    verified = verify_bundle(
        bundle,
        silo_keys=federation.silo_keys,
        audit_public_key=federation.signer.public_key,
        recompute_epsilon=rdp_epsilon,
        origin=ORIGIN if pinned else None,
        roster_fingerprint=roster_fingerprint(federation.roster),
        consortium_public_key=CONSORTIUM_KEY if pinned else None,
        unpinned=() if pinned else (Anchor.AUDIT_KEY,),
    )
    return build_report(verified, clock=lambda: GENERATED_AT)


@pytest.fixture
def report(federation: Federation, bundle_dir: Path) -> dict[str, Any]:
    return _report(federation, bundle_dir)


def test_report_json_contents(report: dict[str, Any], federation: Federation) -> None:
    assert report["report_schema"] == REPORT_SCHEMA == 3
    assert report["generated_at"] == GENERATED_AT
    assert report["federation"] == "fed-1"
    cp = federation.ledger.latest_checkpoint()
    assert cp is not None
    assert report["checkpoint"] == {
        "origin": cp.origin,
        "size": cp.size,
        "root": cp.root.hex(),
        "note": cp.text,
    }
    assert report["accountants"] == [{"name": "rdp", "version": "dp-accounting 0.6.0"}]
    assert report["trust_model"] == {"n": 3, "t": 2, "c": 0, "min_cohort": 3, "mode": "masking"}
    assert "patient" in str(report["unit_of_privacy"])
    silos = {s["id"]: s for s in report["silos"]}  # type: ignore[attr-defined]
    assert silos["hospital-c"]["rounds"] == [1, 3]  # dropped in round 2
    assert silos["hospital-a"]["rounds"] == [1, 2, 3]
    for s in silos.values():
        eps = [p["epsilon"] for p in s["epsilon_by_round"]]
        assert eps == sorted(eps)
        assert s["epsilon_spent"] == eps[-1]
        assert s["budget"] == {"epsilon": 8, "delta": 1e-5}
        assert s["delta"] == 1e-5
    assert report["mechanism_parameters"]["hospital-b"]["noise_multiplier"] == 1.1 + 0.1
    assert "library_versions" not in report["mechanism_parameters"]["hospital-b"]
    assert report["library_versions"] == [
        {"silo": s, "library": "dp-accounting", "version": "0.6.0"} for s in sorted(silos)
    ]
    kinds = [i["kind"] for i in report["incidents"]]  # type: ignore[attr-defined]
    assert kinds == ["incident"]
    rounds = report["rounds"]
    assert [r["dropped"] for r in rounds] == [[], ["hospital-c"], []]
    # every round dated from its own entries (the test clock ticks once per event)
    entries = [json.loads(e) for e in federation.ledger.entries()]
    opened = [e["time"] for e in entries if e["kind"] == "round_opened"]
    closed = [e["time"] for e in entries if e["kind"] == "round_closed"]
    assert [r["opened_at"] for r in rounds] == opened
    assert [r["closed_at"] for r in rounds] == closed
    assert report["period"] == {"start": entries[0]["time"], "end": entries[-1]["time"]}
    assert report["verification"]["status"] == "verified"
    assert report["summary"]["silos"] == sorted(federation.silo_keys)
    json.dumps(report)  # plain JSON all the way down


def test_html_is_self_contained_and_escaped(report: dict[str, object]) -> None:
    report = dict(report)
    report["federation"] = "<script>alert(1)</script>"
    silos = [dict(s) for s in report["silos"]]  # type: ignore[attr-defined]
    silos[0]["id"] = "<img src=x onerror=alert(2)>$x$"
    report["silos"] = silos
    page = render_html(report)
    assert "<script>alert" not in page
    assert "&lt;script&gt;" in page
    assert "<img" not in page  # neither in the table nor in the chart's legend
    assert "&lt;img src=x onerror=alert(2)&gt;$x$" in _chart(page)  # drawn literally, not as math
    namespaces = re.compile(r'\sxmlns(:\w+)?="[^"]*"')  # names, never fetched
    assert "http://" not in namespaces.sub("", page)
    assert "https://" not in page
    assert "<link" not in page
    assert "src=" not in page.replace("&lt;img src=x", "")
    assert 'id="silo-table"' in page
    assert "<svg" in page


def _chart(page: str) -> str:
    start = page.index('<svg id="epsilon-plot"')
    return page[start : page.index("</svg>", start) + len("</svg>")]


_SVG = "{http://www.w3.org/2000/svg}"
_XLINK_HREF = "{http://www.w3.org/1999/xlink}href"


def _marker_shape(root: ElementTree.Element, series: ElementTree.Element) -> str:
    """The outline of the marker a series draws at its points (defined once, used per point)."""
    use = series.find(f".//{_SVG}use")
    assert use is not None
    marker = root.find(f".//{_SVG}path[@id='{use.get(_XLINK_HREF, '')[1:]}']")
    assert marker is not None
    return marker.get("d", "")


def test_epsilon_chart_has_one_distinguishable_series_per_silo(report: dict[str, object]) -> None:
    silos: list[dict[str, object]] = report["silos"]  # type: ignore[assignment]
    root = ElementTree.fromstring(_chart(render_html(report)))
    groups = {g.get("id", ""): g for g in root.iter(f"{_SVG}g")}
    series = [groups[f"epsilon-silo-{i}"] for i in range(len(silos))]
    assert f"epsilon-silo-{len(silos)}" not in groups
    for group, silo in zip(series, silos, strict=True):
        rounds = silo["epsilon_by_round"]
        assert isinstance(rounds, list)
        assert len(group.findall(f".//{_SVG}use")) == len(rounds)  # one marker per round
    # a different marker shape and line style for every silo, not only a different colour
    assert len({_marker_shape(root, g) for g in series}) == len(silos)
    line_styles = set()
    for group in series:
        line = group.find(f"{_SVG}path")
        assert line is not None
        line_styles.add(re.sub(r"stroke: #\w+;", "", line.get("style", "")))
    assert len(line_styles) == len(silos)
    budget = groups["epsilon-budget-0"].find(f"{_SVG}path")
    assert budget is not None
    assert "stroke-dasharray" in budget.get("style", "")
    texts = ["".join(t.itertext()) for t in root.iter(f"{_SVG}text")]
    assert {"round", "epsilon (cumulative)"} <= set(texts)
    assert texts.count("budget 8") == 2  # on the line and in the legend
    for silo in silos:
        assert silo["id"] in texts  # in the legend


def test_epsilon_chart_is_deterministic(report: dict[str, object]) -> None:
    first, second = _chart(render_html(report)), _chart(render_html(report))
    assert first == second
    assert "<metadata" not in first  # no date, no creator: the same report gives the same bytes


def _chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found:
        return found
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=600)
        subprocess.run(install, capture_output=True, timeout=900)
    found = shutil.which("chromium")
    if not found:
        pytest.skip(
            "!!! Chromium from Debian's packages could not be installed: the HTML "
            "report was NOT rendered in a real browser !!!"
        )
    return found


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report: dict[str, object], tmp_path: Path) -> None:
    chromium = _chromium()
    _, html_path = write_report(report, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["report_schema"] == 3
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = html_path.resolve().as_uri()
    png = tmp_path / "report.png"
    shot = subprocess.run(
        [*flags, f"--screenshot={png}", "--window-size=1280,2000", url],
        capture_output=True,
        timeout=120,
    )
    assert shot.returncode == 0, shot.stderr.decode(errors="replace")[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, timeout=120)
    assert dom.returncode == 0
    rendered = dom.stdout.decode()
    assert '<table id="silo-table">' in rendered
    for silo in ("hospital-a", "hospital-b", "hospital-c"):
        assert silo in rendered
    assert '<svg id="epsilon-plot"' in rendered
    assert rendered.count('id="epsilon-silo-') == 3
    assert 'id="epsilon-budget-0"' in rendered


# ------------------------------------------------------------------- what was pinned, in words


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def test_the_header_says_what_was_pinned(report: dict[str, Any], federation: Federation) -> None:
    page = render_html(report)
    header = page[: page.index('id="summary"')]
    assert "Verified against the keys you pinned." in header
    assert "banner-verified" in header
    statement = report["verification"]["statement"]
    assert statement.startswith("Pinned by the auditor: the coordinator's audit key")
    for key in (federation.signer.public_key, CONSORTIUM_KEY):
        assert _fingerprint(key) in statement
        assert _fingerprint(key) in header
    assert repr(ORIGIN) in statement
    assert roster_fingerprint(federation.roster) in statement


def test_an_unpinned_report_never_shows_a_green_verified(
    federation: Federation, bundle_dir: Path
) -> None:
    pinned = render_html(_report(federation, bundle_dir))
    unpinned_report = _report(federation, bundle_dir, pinned=False)
    unpinned = render_html(unpinned_report)
    assert unpinned != pinned
    assert unpinned_report["verification"]["status"] == "unpinned"
    assert unpinned_report["verification"]["statement"].startswith("Nothing was pinned")
    assert "Verified against" not in unpinned
    assert 'class="banner banner-verified"' not in unpinned
    assert 'class="banner banner-unpinned"' in unpinned
    assert "NOT verified against keys you trust" in unpinned
    assert unpinned.count("no: read from the bundle") == 2


def test_the_summary_comes_first_in_plain_words(report: dict[str, Any]) -> None:
    page = render_html(report)
    headings = re.findall(r"<h2 id=\"([a-z-]+)\"", page)
    assert headings[0] == "summary"
    assert {"rounds", "parameters", "software", "incidents", "completeness", "mapping"} <= set(
        headings
    )
    summary = report["summary"]
    assert "hospital-a, hospital-b and hospital-c" in summary["who"]
    assert "one patient record (add/remove) in one silo" in summary["unit_of_privacy"]
    assert "e^epsilon" in summary["guarantee"] and "delta" in summary["guarantee"]
    assert "NIST SP 800-226" in summary["reference"]
    assert "2025-03-01 10:00:01 UTC" in summary["when"]
    assert "2025-03-02 09:30:00 UTC" in summary["when"]  # the report's own date


def test_no_python_repr_reaches_the_page(report: dict[str, Any]) -> None:
    page = render_html(report)
    body = page[: page.index('<h2 id="checkpoint"')]
    assert "{'" not in body and "': " not in body  # dicts become tables
    versions = body[body.index('id="version-table"') :]
    assert "<td><code>dp-accounting</code></td><td>0.6.0</td>" in versions


def test_every_section_maps_to_nist_and_the_ai_act(report: dict[str, Any]) -> None:
    mapping = report["regulatory_mapping"]
    sections = {m["section"] for m in mapping}
    assert {"Unit of privacy", "Trust model", "Incidents and their resolution"} <= sections
    assert all(
        m["nist_sp_800_226"] and m["eu_ai_act_article_12"].startswith("Art. 12") for m in mapping
    )
    for field_names in (m["fields"] for m in mapping):
        for name in re.findall(r"[a-z_]+", field_names.split(",")[0]):
            assert name in report or name in report["silos"][0] or name in report["verification"]


# ---------------------------------------------------------------- an epsilon mismatch, explained


def _restart_federation(tmp_path: Path) -> tuple[Federation, Path]:
    """Round 1 completes; the coordinator restarts during round 2 before hospital-b's upload (its
    accountant already counted the training); round 3 completes with hospital-b's higher claim."""
    fed = build_federation(tmp_path / "l.sqlite", rounds=1)
    histories = {s: history_of(fed, s) for s in fed.silo_keys}
    round_2 = [fed.attestation_event(s, 2, histories[s]) for s in ("hospital-a", "hospital-c")]
    phantom = dict(histories["hospital-b"][-1], round=2)  # trained, never attested in the ledger
    fed.ledger.append_many(
        [fed.event(EventKind.ROUND_OPENED, 2, {"model_hash": "ab" * 32}), *round_2]
    )
    fed.ledger.append(
        fed.event(
            EventKind.ROUND_ABORTED,
            2,
            {"reason": "coordinator restarted during the round", "recorded_at_restart": True},
        )
    )
    session = hashlib.sha256(b"session-3").hexdigest()
    round_3 = []
    for silo in sorted(fed.silo_keys):
        history = histories[silo]
        override: dict[str, Any] = {"session_id": session}
        if silo == "hospital-b":
            probe = dict(history[-1], round=3)
            override["epsilon"] = rdp_epsilon(silo, [*history, phantom, probe])
        round_3.append(fed.attestation_event(silo, 3, history, **override))
    fed.ledger.append_many(
        [
            fed.event(EventKind.ROUND_OPENED, 3, {"model_hash": "ab" * 32}),
            *round_3,
            fed.event(
                EventKind.PARTICIPANTS,
                3,
                {"survivors": sorted(fed.silo_keys), "dropped": [], "session_id": session},
            ),
            fed.event(EventKind.GLOBAL_MODEL, 3, {"model_hash": "cd" * 32}),
            fed.event(EventKind.ROUND_CLOSED, 3, {"global_model_hash": "cd" * 32}),
        ]
    )
    fed.ledger.checkpoint(fed.signer)
    bundle = write_bundle(
        fed.ledger, tmp_path / "b", roster_bytes=fed.roster, audit_public_key=fed.signer.public_key
    )
    return fed, bundle


def test_an_epsilon_mismatch_after_a_restart_says_which_epsilon_counts(tmp_path: Path) -> None:
    fed, bundle = _restart_federation(tmp_path)
    report = _report(fed, bundle)
    fed.ledger.close()
    (mismatch,) = [i for i in report["incidents"] if i["kind"] == "epsilon_mismatch"]
    (aborted,) = [i for i in report["incidents"] if i["kind"] == "round_aborted"]
    b = next(s for s in report["silos"] if s["id"] == "hospital-b")
    assert mismatch["silo"] == "hospital-b" and mismatch["round"] == 3
    assert mismatch["severity"] == "info"  # not a red incident: nothing was hidden
    assert b["epsilon_counted"] == b["epsilon_spent"] > b["recomputed_epsilon"]
    assert mismatch["epsilon_counted"] == b["epsilon_spent"]
    assert "restarted while round 2 was open" in mismatch["explanation"]
    assert f"entry {aborted['index']}" in mismatch["explanation"]
    assert mismatch["resolution"].startswith(
        f"Nothing was hidden. The epsilon that counts is the silo's own, {b['epsilon_spent']:.6g}"
    )
    assert "routine restart" in aborted["explanation"]
    assert "No aggregate and no model update was released" in aborted["resolution"]
    page = render_html(report)
    assert "need attention" not in page  # only informational incidents
    assert mismatch["resolution"].replace("'", "&#39;") in page


# ------------------------------------------------------------------------ the published schema


def _check(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], path: str) -> None:
    """The subset of JSON Schema 2020-12 that docs/report.schema.json uses (jsonschema is not a
    dependency): $ref, type, const, enum, pattern, minimum, properties, required,
    additionalProperties and items."""
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        _check(value, target, root, path)
    kinds = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "null": type(None),
    }
    if "type" in schema:
        allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(
            isinstance(value, kinds[k]) and (k in ("boolean",) or not isinstance(value, bool))
            for k in allowed
        )
        assert ok, f"{path}: {value!r} is not {allowed}"
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if "pattern" in schema and isinstance(value, str):
        assert re.search(schema["pattern"], value), f"{path}: {value!r} !~ {schema['pattern']}"
    if "minimum" in schema and isinstance(value, int | float):
        assert value >= schema["minimum"], path
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            assert name in value, f"{path}: {name!r} is required"
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                _check(item, properties[name], root, f"{path}.{name}")
            elif extra is False:
                raise AssertionError(f"{path}: {name!r} is not in the published schema")
            elif isinstance(extra, Mapping):
                _check(item, extra, root, f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], root, f"{path}[{i}]")


def validate_against_schema(report: Mapping[str, Any]) -> None:
    schema = json.loads((REPO / "docs" / "report.schema.json").read_text())
    _check(json.loads(json.dumps(report)), schema, schema, "report")


def test_report_json_validates_against_the_published_schema(
    report: dict[str, Any], federation: Federation, bundle_dir: Path, tmp_path: Path
) -> None:
    schema = json.loads((REPO / "docs" / "report.schema.json").read_text())
    assert schema["properties"]["report_schema"]["const"] == REPORT_SCHEMA
    assert set(schema["required"]) == set(report)  # every field is published, none is stale
    validate_against_schema(report)
    validate_against_schema(_report(federation, bundle_dir, pinned=False))
    fed, restarted = _restart_federation(tmp_path)
    # incidents with explanations, an epsilon that counts
    validate_against_schema(_report(fed, restarted))
    fed.ledger.close()
    broken = json.loads(json.dumps(report))
    broken["silos"][0]["epsilon_by_round"][0]["time"] = "yesterday"
    with pytest.raises(AssertionError, match="time"):
        validate_against_schema(broken)
    broken = dict(report, surprise=1)
    with pytest.raises(AssertionError, match="surprise"):
        validate_against_schema(broken)


# ------------------------------------------------------------------------------------ the PDF


def _poppler() -> None:
    """pdftoppm and pdftotext (Debian's poppler-utils), installed if missing, as Chromium is."""
    if shutil.which("pdftoppm") and shutil.which("pdftotext"):
        return
    install = ["apt-get", "install", "-y", "--no-install-recommends", "poppler-utils"]
    if subprocess.run(install, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=600)
        subprocess.run(install, capture_output=True, timeout=900)
    if not (shutil.which("pdftoppm") and shutil.which("pdftotext")):
        pytest.skip(
            "!!! poppler-utils (pdftoppm, pdftotext) could not be installed: the PDF report "
            "was NOT checked !!!"
        )


@pytest.mark.slow
def test_report_pdf_prints_in_headless_chromium(
    report: dict[str, Any], federation: Federation, tmp_path: Path
) -> None:
    from PIL import Image  # matplotlib's own dependency

    chromium = _chromium()
    _poppler()
    _, html_path = write_report(report, tmp_path / "out")
    pdf = write_pdf(html_path, chromium=chromium)
    assert pdf == tmp_path / "out" / "report.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert not (tmp_path / "out" / "report.pdf.partial").exists()
    subprocess.run(
        ["pdftoppm", "-r", "50", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=120
    )
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 1
    with Image.open(pages[0]) as image:
        grey = image.convert("L")
        histogram = grey.histogram()
    dark = sum(histogram[:128]) / sum(histogram)
    assert 0.005 < dark < 0.5  # text on a white page: neither blank nor a black box
    text = subprocess.run(
        ["pdftotext", str(pdf), "-"], capture_output=True, check=True, timeout=120
    ).stdout.decode()
    squeezed = re.sub(r"\s+", "", text)  # long hex wraps in table cells
    first_page = text.split("\f")[0]
    assert "Verified against the keys you pinned." in first_page
    assert "Summary in plain words" in first_page
    for key in (federation.signer.public_key, CONSORTIUM_KEY):
        assert _fingerprint(key) in squeezed
    assert "2025-03-0110:00:01UTC" in squeezed  # the federation was created
    for r in report["rounds"]:
        assert f"{r['opened_at'][:10]}{r['opened_at'][11:19]}UTC" in squeezed
    assert "2025-03-02 09:30:00 UTC" in first_page  # when the report was generated


TESTS_ROOT = Path(__file__).resolve().parents[1]


def _named_tests_exist(cell: str) -> None:
    """Every ``file.py`` or ``file.py::test`` a guarantee names is a real test file (and test)."""
    for name in filter(None, (part.strip() for part in cell.split(","))):
        path, _, test = name.partition("::")
        source = (TESTS_ROOT / path).read_text(encoding="utf-8")
        assert not test or f"def {test}(" in source, name


def test_the_guarantee_table_names_tests_that_exist(report: dict[str, Any]) -> None:
    rows = report["guarantees"]
    assert [r["adversary"] for r in rows] == [
        "malicious coordinator",
        "coordinator colluding with up to c silos",
        "malicious member silo",
        "network attacker",
    ]
    for row in rows:
        _named_tests_exist(row["tests"])
    html = render_html(report)
    assert 'id="guarantee-table"' in html and "test_malicious_silo.py" in html


def test_every_test_the_readme_threat_table_names_exists() -> None:
    readme = (TESTS_ROOT.parent / "README.md").read_text(encoding="utf-8")
    table = readme[
        readme.index("**What each mode guarantees") : readme.index("In every mode a malicious")
    ]
    named = re.findall(r"`([a-z0-9_/]+\.py(?:::[a-z0-9_]+)?)`", table)
    assert len(named) >= 8
    for name in named:
        _named_tests_exist(name)
