"""Report JSON content, and the HTML rendered by a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest

from audits import build_report, render_html, verify_bundle, write_report

from .conftest import Federation, rdp_epsilon


@pytest.fixture
def report(federation: Federation, bundle_dir: Path) -> dict[str, object]:
    verified = verify_bundle(
        bundle_dir,
        silo_keys=federation.silo_keys,
        audit_public_key=federation.signer.public_key,
        recompute_epsilon=rdp_epsilon,
    )
    return build_report(verified)


def test_report_json_contents(report: dict[str, object], federation: Federation) -> None:
    assert report["report_schema"] == 1
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
    assert report["mechanism_parameters"]["hospital-b"]["noise_multiplier"] == 1.1 + 0.1  # type: ignore[index]
    kinds = [i["kind"] for i in report["incidents"]]  # type: ignore[attr-defined]
    assert kinds == ["incident"]
    rounds = report["rounds"]
    assert [r["dropped"] for r in rounds] == [[], ["hospital-c"], []]  # type: ignore[attr-defined]
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
    assert json.loads((tmp_path / "out" / "report.json").read_text())["report_schema"] == 1
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
