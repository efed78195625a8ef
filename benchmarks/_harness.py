"""The timing harness and the report of benchmarks/micro.py (see its docstring)."""

from __future__ import annotations

import datetime
import gc
import os
import platform
import statistics
import timeit
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import trio

US, MS = 1_000.0, 1_000_000.0  # in nanoseconds
MB = 1_000_000  # bytes (decimal megabytes)
Timed = Callable[[int], float]  # runs n operations and returns their nanoseconds, setup excluded


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure: ``FULL`` or ``QUICK`` (``--quick``)."""

    repeats: int  # timed repeats of each variant
    sweep_repeats: int  # repeats of each sweep (every one needs a freshly filled table)
    repeat_ns: float  # how long one calibrated repeat should last
    batch: int  # keys per repeat in the de-duplication checks


FULL = Settings(repeats=9, sweep_repeats=9, repeat_ns=60 * MS, batch=100_000)
QUICK = Settings(repeats=3, sweep_repeats=3, repeat_ns=10 * MS, batch=20_000)


@dataclass
class Row:
    """One line of the report; it passes when its median is at most its target."""

    group: str
    name: str
    best: float  # nanoseconds per operation, or bytes when unit == "B"
    median: float
    unit: str = "ns"
    detail: str = ""
    ratio: str = ""
    target: float | None = None

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        return "PASS" if self.median <= self.target else "FAIL"


@dataclass
class FakeClock:
    """A clock the sweeps set by hand."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------- harness


def _paused_gc(fn: Timed, n: int) -> float:
    enabled = gc.isenabled()
    gc.disable()
    try:
        return fn(n)
    finally:
        if enabled:
            gc.enable()


def _calibrate(fn: Timed, repeat_ns: float) -> int:
    """How many operations make one repeat last about ``repeat_ns``."""
    n = 1
    while (elapsed := _paused_gc(fn, n)) < 2 * MS and n < 10**8:
        n *= 10
    return max(1, round(n * repeat_ns / elapsed))


def compare(
    variants: Mapping[str, Timed], s: Settings, *, n: int = 0, repeats: int = 0
) -> dict[str, tuple[float, float]]:
    """Time the variants, interleaving their repeats: ``{name: (best, median)}`` ns per op.

    With ``n`` every repeat runs ``n`` operations; without, each variant is calibrated.
    """
    counts = {name: n or _calibrate(fn, s.repeat_ns) for name, fn in variants.items()}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats or s.repeats):
        for name, fn in variants.items():
            samples[name].append(_paused_gc(fn, counts[name]) / counts[name])
    return {name: (min(v), statistics.median(v)) for name, v in samples.items()}


def stmt(code: str, **names: Any) -> Timed:
    """A ``timeit`` statement: no function call around it, only timeit's bare loop."""
    timer = timeit.Timer(code, globals=names)
    return lambda n: timer.timeit(n) * 1e9


def in_trio(body: Callable[[int], Awaitable[float]]) -> Timed:
    """Run ``body(n)``, which times itself, in a fresh ``trio.run``."""
    return lambda n: trio.run(body, n)


def ratio(value: float, baseline: float) -> str:
    """``value`` as a multiple of ``baseline``: ``"2.50x"``."""
    return f"{value / baseline:.2f}x"


# ---------------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    """CPUs usable, CPU model, Python and library versions, and the date, for the report."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    libraries = ("trio", "attrs", "orjson", "xxhash", "prometheus_client")
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": ", ".join(f"{name} {metadata.version(name)}" for name in libraries),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def fmt(value: float, unit: str) -> str:
    """A time in ns, us or ms, or a size in MB."""
    if unit == "B":
        return f"{value / MB:.2f} MB"
    if abs(value) < US:
        return f"{value:.0f} ns"
    return f"{value / US:.2f} us" if abs(value) < MS else f"{value / MS:.2f} ms"


HEADER = ["Benchmark", "Best", "Median", "Detail", "Ratio", "Target", "Result"]


def cells(row: Row) -> list[str]:
    """The printed cells of ``row``, in ``HEADER`` order."""
    target = "" if row.target is None else "<= " + fmt(row.target, row.unit).replace(".00", "")
    best, median = fmt(row.best, row.unit), fmt(row.median, row.unit)
    return [row.name, best, median, row.detail, row.ratio, target, row.verdict]


def print_text(rows: list[Row]) -> None:
    """Print the report as an aligned table for the terminal, one heading per group."""
    lines = [cells(row) for row in rows]
    widths = [max(len(line[i]) for line in [HEADER, *lines]) for i in range(len(HEADER))]
    print("  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)))
    for i, (row, line) in enumerate(zip(rows, lines, strict=True)):
        if i == 0 or rows[i - 1].group != row.group:
            print(f"\n{row.group}")
        padded = [cell.rjust(width) for cell, width in zip(line, widths, strict=True)]
        print("  ".join([line[0].ljust(widths[0]), *padded[1:]]))


def print_markdown(rows: list[Row], info: dict[str, str], mode: str) -> None:
    """Print one markdown table per group, then the machine it ran on (for the docs)."""
    for group in dict.fromkeys(row.group for row in rows):
        print(f"### {group}\n")
        print("| " + " | ".join(HEADER) + " |")
        print("| --- |" + " ---: |" * (len(HEADER) - 1))
        for row in (row for row in rows if row.group == group):
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in cells(row)) + " |")
        print()
    print(f"_{mode.capitalize()} run, {info['date']}: {info['nproc']} CPUs ({info['cpu']}),")
    print(f"Python {info['python']}, {info['libraries']}._")


Table = tuple[str, list[str], list[list[str]]]  # title, header, rows of a report


def print_markdown_tables(tables: list[Table], footer: str) -> None:
    """Each (title, header, rows) as a bold title and a markdown table (first column left,
    the rest right-aligned), then ``footer`` in italics: the shape of docs/benchmarks.md."""
    for title, header, rows in tables:
        print(f"\n**{title}**\n")
        print("| " + " | ".join(header) + " |")
        print("| --- |" + " ---: |" * (len(header) - 1))
        for row in rows:
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    print(f"\n_{footer}._")
