"""The report of benchmarks/latency_sweep.py: medians of rounds, saturation, targets, chart."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

from _e2e_report import FLOORS, LABELS, percentile, run_line
from _e2e_report import machine as e2e_machine
from _harness import print_markdown_tables

__all__ = [
    "SATURATED_DELIVERED",
    "SATURATED_P50_MS",
    "chart",
    "machine",
    "percentile",
    "point_text",
    "print_markdown",
    "print_text",
    "results",
    "targets",
]

SATURATED_DELIVERED = 0.95  # a point below this fraction of the offered deliveries is saturated
SATURATED_P50_MS = 100.0  # and so is one whose p50 is above this
WSHUB = ("wshub-fast", "wshub-serve")  # the servers the targets are about
TARGET_RATES = (100.0, 500.0)
P50_TARGET_MS = 10.0
SMALL_P99_TARGET_MS = 5.0
FLOOR_FACTOR = 2.0  # p99 at most this many times raw-socket's
SERVE_MARGIN = 1.10  # wshub serve within 10% of the embedded server


def label(kind: str) -> str:
    """The server's name in the tables (raw sockets at a rate: one frame per fan-out)."""
    return FLOORS[kind] if kind == "raw-socket" else LABELS.get(kind, kind)


def machine() -> dict[str, str]:
    """The machine and library versions (as e2e reports them)."""
    return e2e_machine()


def point_text(point: dict[str, Any]) -> str:
    """One window in a line, for the progress output."""
    if "error" in point:
        return f"FAILED: {point['error'][:200]}"
    if point["p50"] is None:
        return f"no message due in the window arrived; delivered {point['delivered']:.0%}"
    text = f"p50 {point['p50']:.2f} ms, p99 {point['p99']:.2f} ms, delivered "
    text += f"{point['delivered']:.0%} ({point['samples']:,} timed)"
    text += "" if point["drained"] else ", backlog still arriving at the drain's end"
    return text + (f", closed {point['closed']}" if point["closed"] else "")


def _median(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def _summary(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over the rounds of one server at one rate, and whether it is saturated."""
    measured = [point for point in points if "error" not in point]
    p50 = _median([point["p50"] for point in measured])
    delivered = _median([point["delivered"] for point in measured])
    cut = any(point.get("closed") for point in measured) or len(measured) < len(points)
    backlog = not all(point.get("drained", True) for point in measured)
    saturated = (
        cut
        or backlog
        or delivered is None
        or delivered < SATURATED_DELIVERED
        or p50 is None
        or p50 > SATURATED_P50_MS
    )
    return {
        "p50": p50,
        "p99": _median([point["p99"] for point in measured]),
        "delivered": delivered,
        "published_per_second": _median([point["published_per_second"] for point in measured]),
        "samples": sum(point["samples"] for point in measured),
        "rounds": len(points),
        "failed_rounds": len(points) - len(measured),
        "cut": cut,
        "backlog": backlog,
        "saturated": saturated,
    }


def results(sweep: Any, info: dict[str, str]) -> dict[str, Any]:
    """Summaries of ``sweep`` (a ``latency_sweep.Sweep``) and the verdict on every target."""
    grouped: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    for point in sweep.points:
        by_subs = grouped.setdefault(point["server"], {}).setdefault(str(point["subscribers"]), {})
        by_subs.setdefault(f"{point['rate']:g}", []).append(point)
    summary = {
        kind: {
            subs: {rate: _summary(points) for rate, points in by_rate.items()}
            for subs, by_rate in by_subs.items()
        }
        for kind, by_subs in grouped.items()
    }
    saturation: dict[str, float | None] = {}
    for kind, points_of in summary.items():
        sweep_points = points_of.get(str(sweep.subscribers), {})
        saturated = [float(rate) for rate, entry in sweep_points.items() if entry["saturated"]]
        saturation[kind] = min(saturated) if saturated else None
    out: dict[str, Any] = {
        "mode": sweep.mode,
        "machine": info,
        "settings": dataclasses.asdict(sweep.settings),
        "subscribers": sweep.subscribers,
        "rates": list(sweep.rates),
        "small": list(sweep.small),
        "definition": (
            f"saturated: delivered < {SATURATED_DELIVERED:.0%} of rate x subscribers within "
            f"the window, or p50 > {SATURATED_P50_MS:g} ms, or a client cut, or a backlog "
            "still arriving when the drain ended; a server saturates at the lowest swept rate "
            "whose point is saturated"
        ),
        "summary": summary,
        "saturation": saturation,
        "disconnects": sweep.disconnects,
        "points": sweep.points,
    }
    out["targets"] = targets(out)
    return out


def _entry(out: dict[str, Any], kind: str, subs: int, rate: float) -> dict[str, Any] | None:
    entry: dict[str, Any] | None = out["summary"].get(kind, {}).get(str(subs), {}).get(f"{rate:g}")
    return entry


def _verdict(
    name: str, measured: float | None, limit: float, text: str, entry: dict[str, Any] | None
) -> dict[str, Any]:
    """Met when ``measured <= limit`` at a point that is not saturated (``entry``'s)."""
    if measured is None:
        return {"name": name, "text": "no data", "verdict": "not met"}
    saturated = entry is None or entry["saturated"]
    verdict = "met" if measured <= limit and not saturated else "not met"
    text += ", saturated" if saturated else ""
    return {"name": name, "measured": measured, "text": text, "verdict": verdict}


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Met or not met for each latency target of issue 14 (ratios within the same run).

    A target whose rate or server was not part of the run is left out.
    """
    subs = out["subscribers"]
    small_subs, small_rate = int(out["small"][0]), float(out["small"][1])
    kinds = [kind for kind in WSHUB if kind in out["summary"]]
    found: list[dict[str, Any]] = []
    swept = [rate for rate in TARGET_RATES if rate in out["rates"]]
    for kind in kinds:
        for rate in swept:
            entry = _entry(out, kind, subs, rate)
            p50 = entry["p50"] if entry else None
            name = f"{kind}: p50 <= {P50_TARGET_MS:g} ms, {subs} subs at {rate:g}/s"
            text = f"{p50:.2f} ms" if p50 is not None else ""
            found.append(_verdict(name, p50, P50_TARGET_MS, text, entry))
        for rate in swept:
            entry, floor = _entry(out, kind, subs, rate), _entry(out, "raw-socket", subs, rate)
            if floor is None:
                continue
            p99, floor_p99 = (entry or {}).get("p99"), floor["p99"]
            ratio = p99 / floor_p99 if p99 is not None and floor_p99 else None
            name = f"{kind}: p99 <= {FLOOR_FACTOR:g}x raw-socket's p99, {subs} subs at {rate:g}/s"
            text = f"{ratio:.2f}x ({p99:.2f} vs {floor_p99:.2f} ms)" if ratio else ""
            found.append(_verdict(name, ratio, FLOOR_FACTOR, text, entry))
        entry = _entry(out, kind, small_subs, small_rate)
        p99 = entry["p99"] if entry else None
        name = f"{kind}: p99 <= {SMALL_P99_TARGET_MS:g} ms, {small_subs} subs at {small_rate:g}/s"
        text = f"{p99:.2f} ms" if p99 is not None else ""
        found.append(_verdict(name, p99, SMALL_P99_TARGET_MS, text, entry))
    if set(WSHUB) <= out["summary"].keys():
        figures = [(subs, rate, q) for rate in swept for q in ("p50", "p99")]
        figures.append((small_subs, small_rate, "p99"))
        for n, rate, q in figures:
            serve, fast = _entry(out, "wshub-serve", n, rate), _entry(out, "wshub-fast", n, rate)
            ours, theirs = (serve or {}).get(q), (fast or {}).get(q)
            ratio = ours / theirs if ours is not None and theirs else None
            name = f"wshub-serve {q} within 10% of wshub-fast, {n} subs at {rate:g}/s"
            text = f"{ratio:.2f}x ({ours:.2f} vs {theirs:.2f} ms)" if ratio else ""
            found.append(_verdict(name, ratio, SERVE_MARGIN, text, serve))
        serve_at, fast_at = out["saturation"]["wshub-serve"], out["saturation"]["wshub-fast"]
        never = float("inf")
        met = (serve_at or never) >= (fast_at or never)
        found.append(
            {
                "name": "wshub-serve saturates at no lower a rate than wshub-fast",
                "text": f"{_rate(serve_at)} vs {_rate(fast_at)}",
                "verdict": "met" if met else "not met",
            }
        )
    return found


# ---------------------------------------------------------------------------------- tables


def _rate(rate: float | None) -> str:
    return "not within the sweep" if rate is None else f"{rate:g}/s"


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    if entry["failed_rounds"] == entry["rounds"]:
        return "failed *"
    if entry["p50"] is None:  # a server that could not even publish them is saturated
        return "late *"
    text = f"{entry['p50']:.1f} / {entry['p99']:.1f}"
    return text + (" *" if entry["saturated"] else "")


def _tables(out: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    subs, rates = out["subscribers"], [float(rate) for rate in out["rates"]]
    small_subs, small_rate = int(out["small"][0]), float(out["small"][1])
    rounds = out["settings"]["rounds"]
    spread = f"median of {rounds} rounds" if rounds > 1 else "one round"
    kinds = list(out["summary"])
    latency = [
        [label(kind)]
        + [_cell(_entry(out, kind, subs, rate)) for rate in rates]
        + [_rate(out["saturation"][kind])]
        for kind in kinds
    ]
    delivered = [
        [label(kind)]
        + [
            f"{entry['delivered']:.0%}" if entry and entry["delivered"] is not None else "-"
            for entry in (_entry(out, kind, subs, rate) for rate in rates)
        ]
        for kind in kinds
    ]
    small = []
    for kind in kinds:
        entry = _entry(out, kind, small_subs, small_rate)
        if entry is not None and entry["p50"] is not None:
            cells = [f"{entry['p50']:.2f}", f"{entry['p99']:.2f}", f"{entry['delivered']:.0%}"]
            small.append([label(kind), *cells])
    return [
        (
            f"Publish-to-receive latency, p50 / p99 (ms), {subs} subscribers, {spread} "
            "(* saturated; late: no message due within the window arrived by the report)",
            ["Server", *(f"{rate:g}/s" for rate in rates), "Saturates at"],
            latency,
        ),
        (
            f"Delivered within the window, of rate x {subs} subscribers, {spread}",
            ["Server", *(f"{rate:g}/s" for rate in rates)],
            delivered,
        ),
        (
            f"Latency (ms), {small_subs} subscribers at {small_rate:g} msg/s, {spread}",
            ["Server", "p50", "p99", "Delivered"],
            small,
        ),
        (
            "Targets (issue 14)",
            ["Target", "Measured", "Result"],
            [[t["name"], t["text"], t["verdict"]] for t in out["targets"]],
        ),
    ]


def print_text(out: dict[str, Any]) -> None:
    """Print every table, aligned, for the terminal."""
    for title, header, rows in _tables(out):
        print(f"\n{title}")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            cells = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
            print("  ".join([row[0].ljust(widths[0]), *cells]))
    print(f"\n{out['definition']}")
    for line in out["disconnects"]:
        print(f"note: {line}")


def print_markdown(out: dict[str, Any]) -> None:
    """Print every table in markdown, then the machine line (for docs/benchmarks.md)."""
    print_markdown_tables(_tables(out), run_line(out))


# ---------------------------------------------------------------------------------- chart


def chart(out: dict[str, Any], directory: Path) -> Path | None:
    """Write latency-sweep.png (p50 and p99 against the rate, log-log); None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullLocator
    except ImportError:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    subs = str(out["subscribers"])
    figure, axes = plt.subplots(figsize=(10, 6))
    for i, (kind, by_subs) in enumerate(out["summary"].items()):
        color = f"C{i}"
        by_rate = sorted(
            (float(rate), entry)
            for rate, entry in by_subs.get(subs, {}).items()
            if entry["p50"] is not None
        )
        for q, style, marker in (("p50", "-", "o"), ("p99", "--", "^")):
            rates = [rate for rate, _ in by_rate]
            values = [entry[q] for _, entry in by_rate]
            name = label(kind) if q == "p50" else None  # one legend entry per server
            axes.plot(rates, values, style, color=color, label=name, linewidth=1.2)
            for rate, entry in by_rate:  # hollow markers: saturated
                face = "none" if entry["saturated"] else color
                axes.plot(rate, entry[q], marker, color=color, markerfacecolor=face)
    axes.plot([], [], "-o", color="gray", label="p50 (solid, circles)")
    axes.plot([], [], "--^", color="gray", label="p99 (dashed, triangles)")
    axes.axhline(P50_TARGET_MS, color="red", linestyle=":", linewidth=1, label="10 ms")
    axes.set_xscale("log")
    axes.set_yscale("log")
    rates = [float(rate) for rate in out["rates"]]
    axes.set_xticks(rates, [f"{rate:g}" for rate in rates])
    axes.xaxis.set_minor_locator(NullLocator())  # the swept rates are the ticks
    axes.set_xlabel("messages published per second (log scale)")
    axes.set_ylabel("publish to receive (ms, log scale)")
    when = f"{out['mode']} run, {out['machine']['date']}, {out['machine']['nproc']} CPUs"
    axes.set_title(
        f"Latency against rate, {subs} subscribers; hollow markers: saturated ({when})",
        fontsize=10,
    )
    axes.grid(True, which="both", linewidth=0.3)
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    figure.tight_layout()
    path = directory / "latency-sweep.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
