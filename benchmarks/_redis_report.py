"""The report of benchmarks/redis_broker.py: medians over rounds, ratios, targets, tables, chart.

CPU per delivery is in CPU-microseconds per delivery (the same number as CPU-seconds per
million deliveries), printed to three significant digits, so that a ratio near issue 13's
1.2x can be read. Ratios are of medians over rounds: the Redis rows' server CPU per delivery
against the memory row with the same publisher tasks, and deliveries/s against the better
of the two memory rows (one memory-broker process at its best).
"""

from __future__ import annotations

import statistics
from importlib import metadata
from pathlib import Path
from typing import Any

from _harness import machine as base_machine
from _harness import print_markdown_tables

__all__ = ["chart", "machine", "print_markdown", "print_text", "results"]

SPEED_GOAL = 1.3  # 2 workers on Redis against one memory-broker process, deliveries/s
CPU_GOAL = 1.2  # Redis's server CPU per delivery against memory's, at most
PUBLISH_GOAL = 20_000.0  # publishes/s through Redis from one process, 32 tasks, one stream
RESUME_GOAL_MS = 20.0  # resume of 1,000 messages from Redis
FIGURES = (
    "deliveries_per_s",
    "server_us_per_delivery",
    "redis_us_per_delivery",
    "servers_cores",
    "loadgen_cores",
    "redis_cores",
    "machine_busy",
)


def machine() -> dict[str, str]:
    """The machine and the versions of what runs the servers and Redis."""
    info = base_machine()
    libraries = ("trio", "wsproto", "coredis", "orjson")
    info["libraries"] = ", ".join(f"{name} {metadata.version(name)}" for name in libraries)
    return info


def _memory_twin(name: str) -> str:
    """The memory row with the same publisher tasks as the Redis row ``name``."""
    return "memory, 1 process, " + name.rsplit(", ", 1)[1]


def results(
    mode: str, settings: dict[str, Any], measured: dict[str, Any], info: dict[str, str]
) -> dict[str, Any]:
    """The results file: every round, the medians, the ratios and the targets."""
    summary = {
        name: {figure: statistics.median(r[figure] for r in rounds) for figure in FIGURES}
        for name, rounds in measured["fanout"].items()
    }
    memory = {name: s for name, s in summary.items() if name.startswith("memory")}
    best = max(memory, key=lambda name: memory[name]["deliveries_per_s"], default=None)
    cpu: dict[str, dict[str, float]] = {}
    speed: dict[str, float] = {}
    for name, figures in summary.items():
        if name.startswith("memory"):
            continue
        twin = summary.get(_memory_twin(name))
        if twin is not None:
            server = twin["server_us_per_delivery"]
            cpu[name] = {
                "server": figures["server_us_per_delivery"] / server,
                "with_redis": (figures["server_us_per_delivery"] + figures["redis_us_per_delivery"])
                / server,
            }
        if best is not None:
            speed[name] = figures["deliveries_per_s"] / memory[best]["deliveries_per_s"]
    out = {
        "mode": mode,
        "settings": settings,
        "machine": info,
        "fanout": measured["fanout"],
        "summary": summary,
        "best_memory": best,
        "cpu_ratio": cpu,
        "speed_ratio": speed,
        "one_process": measured["one_process"],
    }
    out["targets"] = targets(out)
    return out


def _target(name: str, measured: float | None, goal: float, text: str, higher: bool) -> Any:
    if measured is None:
        verdict = "not measured"
    else:
        verdict = "met" if (measured >= goal if higher else measured <= goal) else "not met"
    return {"name": name, "measured": measured, "goal": goal, "text": text, "verdict": verdict}


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's goals, judged on these results."""
    one = out["one_process"]
    resumed = out["settings"]["resume"]
    return [
        _target(
            "deliveries/s, Redis 2 workers / one memory process",
            out["speed_ratio"].get(f"redis, 2 workers, {_tasks(out)}"),
            SPEED_GOAL,
            f">= {SPEED_GOAL}x",
            higher=True,
        ),
        _target(
            "server CPU per delivery, Redis 1 worker / memory (same publishers)",
            out["cpu_ratio"].get(f"redis, 1 worker, {_tasks(out)}", {}).get("server"),
            CPU_GOAL,
            f"<= {CPU_GOAL}x",
            higher=False,
        ),
        _target(
            "publishes/s through Redis, 32 tasks, one stream",
            one.get("publishes_per_s_32_tasks"),
            PUBLISH_GOAL,
            f">= {PUBLISH_GOAL:,.0f}",
            higher=True,
        ),
        _target(
            f"resume of {resumed:,} messages from Redis (ms)",
            one.get("resume_ms_median"),
            RESUME_GOAL_MS,
            f"<= {RESUME_GOAL_MS:g} ms" + ("" if resumed == 1000 else " (for 1,000)"),
            higher=False,
        ),
    ]


def _tasks(out: dict[str, Any]) -> str:
    """How the rows with many publisher tasks are named (``16 publishers``)."""
    names = [name for name in out["summary"] if name.startswith("redis, 1 worker, ")]
    many = [name.rsplit(", ", 1)[1] for name in names if not name.endswith(" 1 publisher")]
    return many[0] if many else "16 publishers"


# ---------------------------------------------------------------------------------- tables


def _rate(value: float) -> str:
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.0f}k"


def _us(value: float) -> str:
    return f"{value:.3g}"


def _spread(rounds: list[dict[str, float]], figure: str, form: Any) -> str:
    values = [form(r[figure]) for r in rounds]
    return values[0] if len(values) == 1 else ", ".join(values)


def _tables(out: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = []
    summary, rounds = out["summary"], out["fanout"]
    count = out["settings"]["rounds"]
    if summary:
        body = []
        for name, s in summary.items():
            cores = f"{s['servers_cores']:.2f} / {s['loadgen_cores']:.2f} / {s['redis_cores']:.2f}"
            body.append(
                [
                    name,
                    f"{_rate(s['deliveries_per_s'])} "
                    f"({_spread(rounds[name], 'deliveries_per_s', _rate)})",
                    f"{_us(s['server_us_per_delivery'])} "
                    f"({_spread(rounds[name], 'server_us_per_delivery', _us)})",
                    _us(s["redis_us_per_delivery"]),
                    cores,
                    f"{s['machine_busy']:.2f}",
                ]
            )
        tables.append(
            (
                f"Fan-out at {out['settings']['subscribers']} subscribers: median of {count} "
                "round(s), every round in brackets",
                [
                    "row",
                    "deliveries/s",
                    "server CPU us per delivery",
                    "Redis CPU us per delivery",
                    "cores: servers / load generators / Redis",
                    "all cores busy",
                ],
                body,
            )
        )
        ratios = []
        for name, ratio in out["cpu_ratio"].items():
            twin = summary[_memory_twin(name)]["server_us_per_delivery"]
            ratios.append(
                [
                    name,
                    f"{ratio['server']:.2f}x ({_us(summary[name]['server_us_per_delivery'])} / "
                    f"{_us(twin)} us)",
                    f"{ratio['with_redis']:.2f}x",
                    f"{out['speed_ratio'][name]:.2f}x" if name in out["speed_ratio"] else "-",
                ]
            )
        if ratios:
            tables.append(
                (
                    "Redis rows against memory (ratios of medians)",
                    [
                        "row",
                        "server CPU per delivery / memory's, same publishers",
                        "with Redis's own CPU",
                        f"deliveries/s / the best memory row's ({out['best_memory']})",
                    ],
                    ratios,
                )
            )
    one = out["one_process"]
    if one:
        names = {
            "publishes_per_s_one_task": "publishes/s, 1 task awaiting each",
            "publishes_per_s_32_tasks": "publishes/s, 32 tasks on one stream",
            "publishes_per_s_32_tasks_8_streams": "publishes/s, 32 tasks over 8 streams",
            "resume_ms_median": (
                f"resume of {out['settings']['resume']:,} messages, ms (median of 5)"
            ),
        }
        body = [[names[key], f"{value:,.1f}"] for key, value in one.items()]
        tables.append(("Redis broker, one process", ["measure", "result"], body))
    body = [
        [
            t["name"],
            "-" if t["measured"] is None else f"{t['measured']:,.2f}",
            t["text"],
            t["verdict"],
        ]
        for t in out["targets"]
    ]
    tables.append(("Issue 13's goals", ["goal", "measured", "target", "verdict"], body))
    return tables


def _footer(out: dict[str, Any]) -> str:
    info = out["machine"]
    return (
        f"{out['mode']} run, {info['date']}, {info['seconds']} s: {info['nproc']} CPUs "
        f"({info['cpu']}), load average {info['load']} at the end, Python {info['python']}, "
        f"{info['libraries']}"
    )


def print_text(out: dict[str, Any]) -> None:
    """The tables as aligned text."""
    for title, header, body in _tables(out):
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        print(f"\n{title}")
        for row in [header, *body]:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            print("  " + "  ".join(cells))
    if out["mode"] != "full":
        print("\n(a custom run checks the code; its numbers are not the docs')")
    print(f"\n{_footer(out)}")


def print_markdown(out: dict[str, Any]) -> None:
    """The tables as markdown, for docs/benchmarks.md."""
    print_markdown_tables(_tables(out), _footer(out))


# ---------------------------------------------------------------------------------- chart


def chart(out: dict[str, Any], directory: Path) -> Path | None:
    """Write redis-broker.png: deliveries/s and CPU per delivery by row; None without
    fan-out rows or without matplotlib."""
    summary = out["summary"]
    if not summary:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    names = list(summary)
    colors = ["C0" if name.startswith("memory") else "C1" for name in names]
    xs = list(range(len(names)))
    labels = [name.replace(", ", "\n", 1) for name in names]
    figure, (rate, cpu) = plt.subplots(1, 2, figsize=(13, 5.5))

    medians = [summary[name]["deliveries_per_s"] / 1e6 for name in names]
    bars = rate.bar(xs, medians, 0.6, color=colors)
    rate.bar_label(bars, [f"{m:.2f}M" for m in medians], fontsize=8, padding=2)
    for x, name in zip(xs, names, strict=True):  # every round, as a dot over its median
        values = [r["deliveries_per_s"] / 1e6 for r in out["fanout"][name]]
        rate.plot([x] * len(values), values, "k.", markersize=4)
    best = out["best_memory"]
    if best is not None:
        goal = SPEED_GOAL * summary[best]["deliveries_per_s"] / 1e6
        rate.axhline(goal, color="red", linestyle="--", linewidth=1)
        rate.text(
            len(names) - 0.5, goal, f"goal for 2 workers: {SPEED_GOAL}x memory", color="red",
            fontsize=7, ha="right", va="bottom",
        )  # fmt: skip
    rate.set_xticks(xs, labels, fontsize=7, rotation=20, ha="right")
    rate.set_ylabel("deliveries per second (millions)")
    rate.set_title(f"Fan-out at {out['settings']['subscribers']} subscribers", fontsize=10)
    rate.margins(y=0.15)

    server = [summary[name]["server_us_per_delivery"] for name in names]
    redis = [summary[name]["redis_us_per_delivery"] for name in names]
    bars = cpu.bar(xs, server, 0.6, color=colors, label="server processes")
    cpu.bar(
        xs, redis, 0.6, bottom=server, color="none", edgecolor="gray", hatch="//",
        label="Redis (per delivery)",
    )  # fmt: skip
    cpu.bar_label(bars, [f"{v:.3g}" for v in server], fontsize=8, label_type="center")
    for name, x in zip(names, xs, strict=True):
        twin = summary.get(_memory_twin(name)) if name.startswith("redis") else None
        if twin is not None:
            limit = CPU_GOAL * twin["server_us_per_delivery"]
            cpu.plot([x - 0.35, x + 0.35], [limit, limit], color="red", linestyle="--")
    cpu.plot([], [], color="red", linestyle="--", label=f"{CPU_GOAL}x memory's (same publishers)")
    cpu.set_xticks(xs, labels, fontsize=7, rotation=20, ha="right")
    cpu.set_ylabel("CPU microseconds per delivery")
    cpu.set_title("CPU per delivery (lower is better)", fontsize=10)
    cpu.legend(fontsize=7)
    cpu.margins(y=0.15)

    info = out["machine"]
    figure.suptitle(
        f"Redis broker beside the memory broker ({out['mode']} run, {info['date']}, "
        f"{info['nproc']} CPUs; dots: each round)",
        fontsize=10,
    )
    figure.tight_layout()
    path = directory / "redis-broker.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
