"""The report of benchmarks/e2e.py: summaries, targets, tables, charts and the profile."""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from _harness import machine as base_machine
from _harness import print_markdown_tables

LABELS = {
    "wshub": "wshub, embedded (trio-websocket)",
    "wshub-fast": "wshub, fast server (wsproto + h11, sockets the hub owns)",
    "wshub-serve": "wshub serve (the command, fast server, memory broker)",
    "wshub-fast-gc-freeze": "wshub, fast server, gc.freeze() after start-up (A/B)",
    "wshub-hypercorn": "wshub under hypercorn (ASGI)",
    "trio-websocket": "raw trio-websocket, pre-batched (ceiling)",
    "hypercorn": "raw hypercorn ASGI, pre-batched (ceiling)",
    "websockets": "websockets asyncio, broadcast() per message",
    "websockets-batched": "websockets asyncio, batched like wshub (fair peer)",
    "raw-socket": "raw sockets, one send() per client, pre-batched (ceiling)",
}
FLOORS = {  # the raw stacks in the latency table: one frame per message, at a low rate
    "trio-websocket": "raw trio-websocket, one frame per message (floor)",
    "hypercorn": "raw hypercorn ASGI, one frame per message (floor)",
    "raw-socket": "raw sockets, one send() per client per frame (floor)",
    "raw-socket@wshub-rate": "raw sockets, at wshub's half-load rate (floor)",
}
CONFIG = (
    "HubConfig.production() merged with server.allow_anonymous = true, limits.max_queue = 10000, "
    "limits.max_connections = 20000, heartbeat.interval = 3600 s (timeout 60 s); everything "
    "else production: limits.write_delay = 0.003 s, limits.max_batch = 64, "
    "metrics.sample_rate = 0.05, history.size = 1000, dedup.window = 300 s"
)


def machine() -> dict[str, str]:
    """The machine and the versions of the libraries under test."""
    info = base_machine()
    libraries = ("trio", "trio-websocket", "wsproto", "hypercorn", "websockets", "orjson")
    info["libraries"] = ", ".join(f"{name} {metadata.version(name)}" for name in libraries)
    return info


def rss(pid: int) -> int:
    """The resident set size of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# ---------------------------------------------------------------------------------- profile

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['function']} ({path})"


def _package(frame: str) -> str:
    path = frame.rsplit("(", 1)[-1]
    for package in ("wshub", "trio_websocket", "wsproto", "trio", "h11", "orjson", "xxhash"):
        if path.startswith(package + "/") or path.startswith(package + "."):
            return package
    return "stdlib" if "/" not in path or path.startswith(("asyncio", "selectors")) else "other"


def summarize_profile(raw: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    def shares(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, count / total) for name, count in counter.most_common(limit)]

    for frame in list(inclusive):  # the entry frames every sample passes through
        if frame.endswith("(servers.py)") or frame.startswith(("run (", "unrolled_run (")):
            del inclusive[frame]
    return {
        "samples": total,
        "self": shares(own, top),
        "inclusive": shares(inclusive, top),
        "packages": shares(packages, 10),
    }


# ---------------------------------------------------------------------------------- results


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of the sorted ``ordered``: the sample at ``q * len``."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _target(name: str, measured: float, limit: float, text: str, higher: bool) -> dict[str, Any]:
    passed = measured >= limit if higher else measured <= limit
    return {
        "name": name,
        "measured": measured,
        "text": text,
        "verdict": "PASS" if passed else "FAIL",
    }


def results(run: Any, info: dict[str, str]) -> dict[str, Any]:
    """Summaries of ``run`` (an e2e ``Run``) and the verdict on every target."""
    throughput = {
        kind: {subs: {**_spread(rates), "rounds": rates} for subs, rates in points.items()}
        for kind, points in run.throughput.items()
    }
    latency = {}
    for kind, entry in run.latency.items():
        ordered = sorted(entry["ms"])
        if not ordered:
            continue
        latency[kind] = {
            "rate": statistics.median(entry["rates"]),
            "samples": len(ordered),
            **{
                name: percentile(ordered, q)
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
            },
            "max": ordered[-1],
        }
    resume = _spread(run.resume_ms) if run.resume_ms else {}
    if run.resume_ms:
        resume["p90"] = percentile(sorted(run.resume_ms), 0.9)
        resume["repeats"] = len(run.resume_ms)
    out: dict[str, Any] = {
        "mode": run.mode,
        "machine": info,
        "settings": dataclasses.asdict(run.settings),
        "config": CONFIG,
        "throughput": throughput,
        "published": run.published,
        "disconnects": run.disconnects,
        "latency": latency,
        "memory": run.memory,
        "resume": resume,
        "profile": run.profile,
    }
    out["targets"] = targets(out)
    return out


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS or FAIL for each target of the brief (ratios measured in the same run)."""
    top = {kind: points["1000"]["median"] for kind, points in out["throughput"].items()}
    found: list[dict[str, Any]] = []
    if {"wshub", "websockets"} <= top.keys():
        ratio = top["wshub"] / top["websockets"]
        text = f"{ratio:.2f}x"
        found.append(_target("wshub >= 3x websockets broadcast, 1000 subs", ratio, 3, text, True))
    if {"wshub-fast", "websockets-batched"} <= top.keys():
        ratio = top["wshub-fast"] / top["websockets-batched"]
        name = "wshub fast server >= 0.8x the batched websockets peer, 1000 subs"
        found.append(_target(name, ratio, 0.8, f"{ratio:.2f}x", True))
    if {"wshub-fast", "wshub-serve"} <= top.keys():
        ratio = top["wshub-serve"] / top["wshub-fast"]
        name = "wshub serve >= 90% of the embedded fast server, 1000 subs"
        found.append(_target(name, ratio, 0.9, f"{ratio:.0%}", True))
    if {"wshub", "trio-websocket"} <= top.keys():
        ratio = top["wshub"] / top["trio-websocket"]
        name = "wshub >= 50% of the raw trio-websocket ceiling, 1000 subs"
        found.append(_target(name, ratio, 0.5, f"{ratio:.0%}", True))
    if {"wshub-hypercorn", "hypercorn"} <= top.keys():
        ratio = top["wshub-hypercorn"] / top["hypercorn"]
        name = "wshub under hypercorn >= 50% of the raw hypercorn ceiling, 1000 subs"
        found.append(_target(name, ratio, 0.5, f"{ratio:.0%}", True))
    if "wshub" in out["latency"]:
        p99 = out["latency"]["wshub"]["p99"]
        name = "p99 publish-to-receive <= 10 ms, 1000 subs at half load"
        found.append(_target(name, p99, 10.0, f"{p99:.1f} ms", False))
    memory = out["memory"]
    if {"wshub", "trio-websocket"} <= memory.keys():
        ours, theirs = (memory[k]["per_connection_bytes"] for k in ("wshub", "trio-websocket"))
        text = f"{ours / 1024:.1f} KiB vs {theirs / 1024:.1f} KiB: {ours / theirs:.2f}x"
        name = "idle connection memory <= 1.25x raw trio-websocket"
        found.append(_target(name, ours / theirs, 1.25, text, False))
    for kind in ("wshub-fast", "wshub-serve"):  # issue 14: against the websockets server
        if {kind, "websockets"} <= memory.keys():
            ours, theirs = (memory[k]["per_connection_bytes"] for k in (kind, "websockets"))
            text = f"{ours / 1024:.1f} KiB vs {theirs / 1024:.1f} KiB: {ours / theirs:.2f}x"
            name = f"idle connection memory, {kind} <= 1.25x websockets"
            found.append(_target(name, ours / theirs, 1.25, text, False))
    if out["resume"]:
        measured = out["resume"]["median"]
        name = "replaying 1,000 messages <= 20 ms (median)"
        found.append(_target(name, measured, 20.0, f"{measured:.1f} ms", False))
    return found


# ---------------------------------------------------------------------------------- text


def _k(value: float) -> str:
    return f"{value / 1000:,.0f}k" if value >= 10_000 else f"{value / 1000:,.1f}k"


def _tables(out: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    rounds = out["settings"]["rounds"]
    spread = "median of 3 rounds (min-max)" if rounds > 1 else "one round"
    subs = ("1", "100", "1000")
    rows = []
    for kind, points in out["throughput"].items():
        cells = [LABELS[kind]]
        for n in subs:
            point = points.get(n)
            if point is None:
                cells.append("-")
            elif rounds > 1:
                cells.append(f"{_k(point['median'])} ({_k(point['min'])}-{_k(point['max'])})")
            else:
                cells.append(_k(point["median"]))
        rows.append(cells)
    tables = [
        (
            f"Fan-out throughput, messages delivered per second, {spread}",
            ["Server", "1 subscriber", "100 subscribers", "1000 subscribers"],
            rows,
        )
    ]
    latency_rows = [
        [
            (FLOORS.get(kind) or LABELS[kind]),
            f"{entry['rate']:,.0f}/s",
            *(f"{entry[q]:.2f}" for q in ("p50", "p90", "p99", "p99.9", "max")),
            f"{entry['samples']:,}",
        ]
        for kind, entry in out["latency"].items()
    ]
    tables.append(
        (
            "Publish-to-receive latency (ms), 1000 subscribers, half of each server's maximum rate",
            ["Server", "Rate", "p50", "p90", "p99", "p99.9", "max", "Samples"],
            latency_rows,
        )
    )
    memory_rows = [
        [
            LABELS[kind],
            f"{entry['connections']:,}",
            f"{entry['before_bytes'] / 2**20:.1f} MiB",
            f"{entry['after_bytes'] / 2**20:.1f} MiB",
            f"{entry['per_connection_bytes'] / 1024:.1f} KiB",
        ]
        for kind, entry in out["memory"].items()
    ]
    tables.append(
        (
            "Memory per idle connection (server RSS growth / connections)",
            ["Server", "Connections", "RSS before", "RSS after", "Per connection"],
            memory_rows,
        )
    )
    resume = out["resume"]
    if resume:
        tables.append(
            (
                f"Resume: hello to the last of 1,000 replayed messages, {resume['repeats']} times",
                ["Server", "median", "p90", "min", "max"],
                [
                    [LABELS["wshub"]]
                    + [f"{resume[q]:.1f} ms" for q in ("median", "p90", "min", "max")]
                ],
            )
        )
    tables.append(
        (
            "Targets",
            ["Target", "Measured", "Result"],
            [[t["name"], t["text"], t["verdict"]] for t in out["targets"]],
        )
    )
    profile = out["profile"]
    if profile.get("samples"):
        rows = [[name, f"{share:.1%}"] for name, share in profile["self"]]
        samples = f"{profile['samples']:,} samples"
        title = f"Profile of the wshub server at 1000 subscribers: self time ({samples})"
        tables.append((title, ["Function (file)", "Self"], rows))
        rows = [[name, f"{share:.1%}"] for name, share in profile["inclusive"]]
        tables.append(("The same profile, inclusive time", ["Function (file)", "Total"], rows))
        rows = [[name, f"{share:.1%}"] for name, share in profile["packages"]]
        tables.append(("The same profile, self time by package", ["Package", "Self"], rows))
    return tables


def print_text(out: dict[str, Any]) -> None:
    """Print every table, aligned, for the terminal."""
    for title, header, rows in _tables(out):
        print(f"\n{title}")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            first = row[0].ljust(widths[0])
            print(
                "  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
            )
    for line in out["disconnects"]:
        print(f"note: {line}")
    if out["profile"].get("error"):
        print(f"profile: {out['profile']['error']}")


def run_line(out: dict[str, Any]) -> str:
    """The run and the machine in one line, under the tables."""
    info = out["machine"]
    return (
        f"{out['mode'].capitalize()} run, {info['date']}, {info['seconds']} s: "
        f"{info['nproc']} CPUs ({info['cpu']}), load average {info['load']} at the end, "
        f"Python {info['python']}, {info['libraries']}"
    )


def print_markdown(out: dict[str, Any]) -> None:
    """Print every table in markdown, then the machine line (for docs/benchmarks.md)."""
    print_markdown_tables(_tables(out), run_line(out))


# ---------------------------------------------------------------------------------- charts


def charts(out: dict[str, Any], directory: Path) -> list[Path]:
    """Write throughput.png and latency.png; nothing when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    when = f"{out['mode']} run, {out['machine']['date']}, {out['machine']['nproc']} CPUs"
    subs = ["1", "100", "1000"]
    kinds = list(out["throughput"])
    width = 0.8 / len(kinds)
    figure, axes = plt.subplots(figsize=(10, 6))
    for i, kind in enumerate(kinds):
        points = [out["throughput"][kind][n] for n in subs]
        xs = [x + (i - (len(kinds) - 1) / 2) * width for x in range(len(subs))]
        medians = [p["median"] for p in points]
        errors = [[m - p["min"] for m, p in zip(medians, points, strict=True)]]
        errors.append([p["max"] - m for m, p in zip(medians, points, strict=True)])
        bars = axes.bar(xs, medians, width, label=LABELS[kind], yerr=errors, capsize=2)
        axes.bar_label(bars, [_k(m) for m in medians], fontsize=7, padding=2, rotation=90)
    axes.set_yscale("log")
    axes.set_xticks(range(len(subs)), [f"{n} subscriber{'s' * (n != '1')}" for n in subs])
    axes.set_ylabel("messages delivered per second (log scale)")
    axes.set_title(f"Fan-out throughput, ~100-byte payloads ({when})", fontsize=10)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)
    axes.margins(y=0.2)
    figure.tight_layout()
    written = [directory / "throughput.png", directory / "latency.png"]
    figure.savefig(written[0], dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(9, 5.5))
    quantiles = ["p50", "p90", "p99", "p99.9"]
    kinds = list(out["latency"])
    width = 0.8 / max(1, len(kinds))
    for i, kind in enumerate(kinds):
        entry = out["latency"][kind]
        xs = [x + (i - (len(kinds) - 1) / 2) * width for x in range(len(quantiles))]
        values = [entry[q] for q in quantiles]
        label = f"{(FLOORS.get(kind) or LABELS[kind])}, {entry['rate']:,.0f} msg/s"
        bars = axes.bar(xs, values, width, label=label)
        axes.bar_label(bars, [f"{v:.1f}" for v in values], fontsize=7, padding=2)
    axes.set_yscale("log")
    axes.axhline(10, color="red", linestyle="--", linewidth=1, label="target: p99 <= 10 ms")
    axes.set_xticks(range(len(quantiles)), quantiles)
    axes.set_ylabel("publish to receive (ms, log scale)")
    axes.set_title(f"Latency at 1000 subscribers, half load ({when})", fontsize=10)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    axes.margins(y=0.15)
    figure.tight_layout()
    figure.savefig(written[1], dpi=110)
    plt.close(figure)
    return written
