"""Regulator reports from a verified bundle: schema-versioned JSON and self-contained HTML.

Notes:
    Contents follow NIST SP 800-226 (Guidelines for Evaluating Differential Privacy
    Guarantees, 2025): the unit of privacy, epsilon and delta per silo, the accountant and its
    version, the mechanism parameters, the trust model, who took part, and every incident.
    The HTML loads nothing from the network (inline CSS and an inline SVG chart drawn with
    matplotlib), so it can be archived with the bundle and opened offline; every value is
    HTML-escaped.
"""

from __future__ import annotations

import io
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


# Colour, marker and line style all change from silo to silo, so series stay apart where they
# overlap, in greyscale and for colour-blind readers (Okabe-Ito colours).
_COLOURS: Final = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
_MARKERS: Final = ("o", "s", "^", "D", "v", "P", "X", "*", "h")
_LINESTYLES: Final = ("solid", "dotted", "dashdot", (0, (5, 1, 1, 1, 1, 1)))  # "--" is the budget's
_BUDGET_COLOUR: Final = "#555555"


def _mathtext_free(text: str) -> str:
    """A label matplotlib draws literally: ``$`` would start math mode."""
    return text.replace("$", r"\$")


def _epsilon_plot(report: Mapping[str, Any]) -> str:
    """Inline SVG: cumulative epsilon per silo per round, the budget(s) as dashed, labelled lines.

    Drawn with matplotlib on its SVG canvas (no pyplot, no global backend or style changes) and
    deterministic: fixed hash salt, no date or creator metadata. Each silo's line is the SVG group
    ``epsilon-silo-<i>`` (in report order), each budget line ``epsilon-budget-<j>``.

    Raises:
        ModuleNotFoundError: matplotlib is not installed (``pip install secagg[report]``).
    """
    import matplotlib  # optional dependency (the "report" extra): imported only when rendering
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    silos = report["silos"]
    budgets: dict[float, list[str]] = {}
    for silo in silos:
        if silo.get("budget"):
            budgets.setdefault(float(silo["budget"]["epsilon"]), []).append(str(silo["id"]))
    with matplotlib.rc_context(
        {
            "svg.hashsalt": "secagg-audit-report",  # fixed ids of clip paths and markers: same bytes
            "svg.fonttype": "none",  # text stays text (searchable, smaller), not glyph outlines
            "font.family": "DejaVu Sans",  # ships with matplotlib: layout independent of the machine
            "font.size": 9.0,
        }
    ):
        figure = Figure(figsize=(8.6, 3.8))
        FigureCanvasSVG(figure)
        axes = figure.add_subplot()
        handles: list[Line2D] = []
        labels: list[str] = []
        for i, silo in enumerate(silos):
            series = sorted(silo["epsilon_by_round"], key=lambda p: p["round"])
            colour = _COLOURS[i % len(_COLOURS)]
            hollow = i % 2 == 1
            (line,) = axes.plot(
                [p["round"] for p in series],
                [p["epsilon"] for p in series],
                color=colour,
                marker=_MARKERS[i % len(_MARKERS)],
                linestyle=_LINESTYLES[i % len(_LINESTYLES)],
                # later silos are drawn thinner and smaller, every other one hollow: a silo whose
                # points coincide with an earlier one's still shows around or inside them
                linewidth=2.4 - 0.6 * (i % 3),
                markersize=8.0 - 1.5 * (i % 3),
                markerfacecolor="none" if hollow else colour,
                markeredgecolor=colour if hollow else "white",
                markeredgewidth=1.4 if hollow else 0.6,
                gid=f"epsilon-silo-{i}",
            )
            handles.append(line)
            labels.append(_mathtext_free(str(silo["id"])))
        for j, (epsilon, owners) in enumerate(sorted(budgets.items())):
            label = f"budget {epsilon:g}"
            if len(budgets) > 1:
                label += f" ({', '.join(owners)})"
            line = axes.axhline(
                epsilon,
                color=_BUDGET_COLOUR,
                linestyle="--",
                linewidth=1.2,
                gid=f"epsilon-budget-{j}",
            )
            axes.annotate(
                _mathtext_free(label),
                xy=(1.0, epsilon),
                xycoords=("axes fraction", "data"),
                xytext=(-4, 3),
                textcoords="offset points",
                ha="right",
                va="bottom",
                color=_BUDGET_COLOUR,
            )
            handles.append(line)
            labels.append(_mathtext_free(label))
        axes.set_xlabel("round")
        axes.set_ylabel("epsilon (cumulative)")
        points = [float(p["epsilon"]) for silo in silos for p in silo["epsilon_by_round"]]
        highest = max([*points, *budgets], default=0.0)
        axes.set_ylim(0.0, 1.12 * highest if highest > 0 else 1.0)  # room for the budget label
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, color="#e3e3e3", linewidth=0.8)
        axes.set_axisbelow(True)
        if (
            handles
        ):  # explicit labels: shown as given (an auto legend would drop ids starting with "_")
            axes.legend(
                handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
            )
        out = io.StringIO()
        figure.savefig(
            out,
            format="svg",
            bbox_inches="tight",
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    svg = out.getvalue()
    svg = svg[svg.index("<svg") :]  # no XML declaration or DOCTYPE inside HTML
    return svg.replace(
        "<svg ",
        '<svg id="epsilon-plot" role="img" '
        'aria-label="Cumulative epsilon per silo per round against the budget" ',
        1,
    )


def render_html(report: Mapping[str, Any]) -> str:
    """Render the report as one self-contained HTML page (inline CSS and SVG, no network).

    Raises:
        ModuleNotFoundError: jinja2 or matplotlib is not installed (``pip install secagg[report]``).
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
        plot=markupsafe.Markup(_epsilon_plot(report)),  # noqa: S704 - matplotlib's SVG escapes its text
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
