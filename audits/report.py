"""Regulator reports from a verified bundle: schema-versioned JSON and self-contained HTML.

Notes:
    Contents follow NIST SP 800-226 (Guidelines for Evaluating Differential Privacy
    Guarantees, 2025): the unit of privacy, epsilon and delta per silo, the accountant and its
    version, the mechanism parameters, the trust model, who took part, and every incident.
    The HTML loads nothing from the network (inline CSS and an SVG drawn here), so it can be
    archived with the bundle and opened offline; every value is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Final

from audits.events import EventKind
from audits.verify import EPSILON_RTOL, VerificationReport

__all__ = ["REPORT_SCHEMA", "build_report", "render_html", "write_report"]

REPORT_SCHEMA: Final = 1

_RESERVED: Final = frozenset({"epsilon", "delta", "round", "silo"})
_INCIDENT_KINDS: Final = {
    EventKind.INCIDENT,
    EventKind.VERIFICATION_FAILURE,
    EventKind.BUDGET_REFUSAL,
    EventKind.ACCOUNTANT_FALLBACK,
    EventKind.ROUND_ABORTED,
}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _budget(privacy: Mapping[str, Any], silo: str, attestation: Mapping[str, Any]) -> Any:
    if isinstance(attestation.get("budget"), Mapping):
        return _plain(attestation["budget"])
    per_silo = privacy.get("silo_budgets", {})
    if silo in per_silo:
        return _plain(per_silo[silo])
    return _plain(privacy["budget"]) if "budget" in privacy else None


def _accountant_version(att: Mapping[str, Any], body: Mapping[str, Any]) -> str:
    for source in (att, body):
        if "accountant_version" in source:
            return str(source["accountant_version"])
        versions = source.get("library_versions")
        if isinstance(versions, Mapping) and versions:
            return ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    return "unknown"


def build_report(verified: VerificationReport) -> dict[str, Any]:
    """Build the machine-readable report (``report_schema: 1``) from a verified bundle."""
    created = verified.entries[0].event.body if verified.entries else {}
    privacy: Mapping[str, Any] = created.get("privacy", {})
    rounds: dict[int, dict[str, Any]] = {}
    silos: dict[str, dict[str, Any]] = {}
    accountants: dict[tuple[str, str], None] = {}
    incidents: list[dict[str, Any]] = []
    silo_level: list[dict[str, Any]] = []  # silo-level distributed DP, per completed round

    def silo_row(silo: str) -> dict[str, Any]:
        return silos.setdefault(
            silo, {"id": silo, "rounds": set(), "epsilon_by_round": [], "last": None}
        )

    for silo in privacy.get("silo_budgets", {}):
        silo_row(silo)

    for entry in verified.entries:
        event = entry.event
        body = event.body
        rnd = event.round
        if rnd is not None and event.kind in (
            EventKind.ROUND_OPENED,
            EventKind.ROUND_CLOSED,
            EventKind.ROUND_ABORTED,
            EventKind.PARTICIPANTS,
            EventKind.GLOBAL_MODEL,
        ):
            info = rounds.setdefault(
                rnd,
                {
                    "round": rnd,
                    "status": "open",
                    "survivors": [],
                    "dropped": [],
                    "reason": None,
                    "model_hash": None,
                },
            )
            if event.kind is EventKind.ROUND_CLOSED:
                info["status"] = "closed"
            elif event.kind is EventKind.ROUND_ABORTED:
                info["status"] = "aborted"
                info["reason"] = body["reason"]
            elif event.kind is EventKind.PARTICIPANTS:
                info["survivors"] = list(body["survivors"])
                info["dropped"] = list(body["dropped"])
                for silo in body["survivors"]:
                    silo_row(silo)["rounds"].add(rnd)
                for silo in body["dropped"]:
                    silo_row(silo)
            elif event.kind is EventKind.GLOBAL_MODEL:
                info["model_hash"] = body["model_hash"]
            if event.kind is EventKind.ROUND_CLOSED and "silo_level_dp" in body:
                silo_level.append({"round": rnd, **_plain(body["silo_level_dp"])})
        if event.kind is EventKind.PRIVACY_ATTESTATION:
            att = body["attestation"]
            row = silo_row(body["silo"])
            claimed = float(att["epsilon"])
            recomputed = float(body["recomputed_epsilon"])
            row["epsilon_by_round"].append(
                {"round": att["round"], "epsilon": claimed, "recomputed_epsilon": recomputed}
            )
            row["last"] = (att, body)
            version = _accountant_version(att, body)
            accountants[(str(body["accountant"]), version)] = None
            if not math.isclose(claimed, recomputed, rel_tol=EPSILON_RTOL, abs_tol=1e-12):
                incidents.append(
                    {
                        "index": entry.index,
                        "kind": "epsilon_mismatch",
                        "round": rnd,
                        "silo": body["silo"],
                        "description": f"silo claims epsilon {claimed:.6g}, coordinator "
                        f"recomputed {recomputed:.6g}",
                    }
                )
        elif event.kind is EventKind.ACCOUNTANT_FALLBACK:
            accountants[(str(body["to_accountant"]), str(body.get("version", "unknown")))] = None
        if event.kind in _INCIDENT_KINDS:
            description = body.get("description") or body.get("reason") or ""
            if event.kind is EventKind.VERIFICATION_FAILURE:
                description = f"{body['what']}: {body['reason']}"
            elif event.kind is EventKind.ACCOUNTANT_FALLBACK:
                description = (
                    f"{body['from_accountant']} -> {body['to_accountant']}: {body['reason']}"
                )
            incidents.append(
                {
                    "index": entry.index,
                    "kind": str(event.kind),
                    "round": rnd,
                    "silo": body.get("silo"),
                    "severity": body.get("severity"),
                    "description": str(description),
                }
            )

    silo_list = []
    mechanism: dict[str, Any] = {}
    for silo in sorted(silos):
        row = silos[silo]
        last = row["last"]
        latest: Mapping[str, Any] = last[0] if last else {}
        params = {k: _plain(v) for k, v in latest.items() if k not in _RESERVED and k != "budget"}
        if params:
            mechanism[silo] = params
        silo_list.append(
            {
                "id": silo,
                "epsilon_spent": float(latest["epsilon"]) if last else 0.0,
                "recomputed_epsilon": float(last[1]["recomputed_epsilon"]) if last else None,
                "delta": float(latest["delta"]) if last else None,
                "budget": _budget(privacy, silo, latest),
                "accountant": str(last[1]["accountant"]) if last else None,
                "rounds": sorted(row["rounds"]),
                "epsilon_by_round": row["epsilon_by_round"],
            }
        )
    cp = verified.checkpoint
    return {
        "report_schema": REPORT_SCHEMA,
        "federation": verified.federation,
        "checkpoint": {
            "origin": cp.origin,
            "size": cp.size,
            "root": cp.root.hex(),
            "note": cp.text,
        },
        "unit_of_privacy": privacy.get("unit_of_privacy", "not recorded"),
        "accountants": [{"name": n, "version": v} for n, v in accountants],
        "trust_model": _plain(created.get("threat_model", {})),
        "roster_fingerprint": created.get("roster_fingerprint"),
        "mechanism_parameters": mechanism,
        "silo_level_dp": {
            "configuration": _plain(privacy.get("silo_level")),
            "per_round": silo_level,
        }
        if silo_level or "silo_level" in privacy
        else None,
        "rounds": [rounds[r] for r in sorted(rounds)],
        "silos": silo_list,
        "incidents": incidents,
        "verification": {
            "entries": len(verified.entries),
            "attestations_checked": verified.attestations_checked,
            "epsilons_recomputed": verified.epsilons_recomputed,
        },
    }


_PALETTE: Final = ("#1b6ca8", "#d1495b", "#2e933c", "#8e44ad", "#e08a00", "#00798c", "#6d4c41")


def _epsilon_plot(report: Mapping[str, Any]) -> str:
    """An inline SVG: cumulative epsilon per silo per round, budgets as dashed lines."""
    width, height, left, right, top, bottom = 860, 380, 64, 170, 20, 48
    silos = report["silos"]
    points = [p for s in silos for p in s["epsilon_by_round"]]
    budgets = [float(s["budget"]["epsilon"]) for s in silos if s.get("budget")]
    rounds = [p["round"] for p in points] or [0]
    x_min, x_max = min(rounds), max(rounds)
    y_max = float(max([p["epsilon"] for p in points] + budgets + [1e-9])) * 1.1
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(r: float) -> float:
        return left + (plot_w * (r - x_min) / (x_max - x_min) if x_max > x_min else plot_w / 2)

    def sy(e: float) -> float:
        return top + plot_h * (1 - e / y_max)

    esc = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="epsilon-plot" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        "<title>Cumulative epsilon per silo per round against the budget</title>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#999"/>',
    ]
    for i in range(6):
        e = y_max * i / 5
        y = sy(e)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e3e3e3"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{e:.3g}</text>'
        )
    for r in sorted(set(rounds)):
        parts.append(
            f'<text x="{sx(r):.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
            f'font-size="11">{r}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle" '
        'font-size="12">round</text>'
    )
    parts.append(
        f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">epsilon (cumulative)</text>'
    )
    legend_y = top + 10
    for i, silo in enumerate(silos):
        color = _PALETTE[i % len(_PALETTE)]
        series = sorted(silo["epsilon_by_round"], key=lambda p: p["round"])
        if series:
            coords = " ".join(f"{sx(p['round']):.1f},{sy(p['epsilon']):.1f}" for p in series)
            parts.append(
                f'<polyline class="silo-line" fill="none" stroke="{color}" '
                f'stroke-width="2" points="{coords}"/>'
            )
            for p in series:
                parts.append(
                    f'<circle cx="{sx(p["round"]):.1f}" cy="{sy(p["epsilon"]):.1f}" '
                    f'r="3" fill="{color}"/>'
                )
        if silo.get("budget"):
            y = sy(float(silo["budget"]["epsilon"]))
            parts.append(
                f'<line class="budget-line" x1="{left}" y1="{y:.1f}" '
                f'x2="{left + plot_w}" y2="{y:.1f}" stroke="{color}" '
                'stroke-dasharray="6 4" stroke-width="1.5"/>'
            )
        lx = left + plot_w + 14
        parts.append(
            f'<line x1="{lx}" y1="{legend_y}" x2="{lx + 22}" y2="{legend_y}" '
            f'stroke="{color}" stroke-width="2"/>'
        )
        parts.append(
            f'<text x="{lx + 28}" y="{legend_y + 4}" font-size="12">{esc(silo["id"])}</text>'
        )
        legend_y += 18
    lx = left + plot_w + 14
    parts.append(
        f'<line x1="{lx}" y1="{legend_y}" x2="{lx + 22}" y2="{legend_y}" '
        'stroke="#555" stroke-dasharray="6 4"/>'
    )
    parts.append(f'<text x="{lx + 28}" y="{legend_y + 4}" font-size="12">budget</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    """Render the report as one self-contained HTML page (inline CSS and SVG, no network).

    Raises:
        ModuleNotFoundError: jinja2 is not installed (``pip install secagg[report]``).
    """
    import jinja2  # optional dependency (the "report" extra): imported only when rendering
    import markupsafe

    template_text = (
        resources.files("audits").joinpath("templates/report.html.j2").read_text("utf-8")
    )
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(template_text)
    return template.render(
        report=report,
        plot=markupsafe.Markup(_epsilon_plot(report)),  # noqa: S704 - our SVG; labels escaped
        report_json=json.dumps(report, indent=2, sort_keys=True),
    )


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    html_path = out / "report.html"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path
