"""Nox sessions: tests, lint, typecheck, bench."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

SOURCES = ["src", "tests", "benchmarks", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    """Micro-benchmarks of the pure core, the end-to-end suite, then the latency sweep
    (docs/benchmarks.md).

    ``nox -s bench -- --quick`` takes about five minutes. ``--quick`` and ``--markdown`` go to
    all three; ``--check`` and ``--charts DIR`` to the end-to-end suite and the sweep; every
    other argument (``--json PATH``, ``--no-profile``) to the end-to-end suite only.
    """
    session.install("-e", ".", "websockets>=13", "matplotlib", "py-spy")
    shared = [arg for arg in session.posargs if arg in ("--quick", "--markdown")]
    session.run("python", "benchmarks/micro.py", *shared)
    session.run("python", "benchmarks/e2e.py", *session.posargs)
    sweep = [*shared, *(arg for arg in session.posargs if arg == "--check")]
    if "--charts" in session.posargs:
        where = session.posargs.index("--charts")
        sweep += session.posargs[where : where + 2]
    session.run("python", "benchmarks/latency_sweep.py", *sweep)


@nox.session(name="bench-redis")
def bench_redis(session: nox.Session) -> None:
    """The Redis broker beside the memory broker (docs/benchmarks.md); needs redis-server.

    ``nox -s bench-redis`` is the full run (about six minutes; the chart goes to docs/img);
    arguments go to ``benchmarks/redis_broker.py`` (``--markdown``, ``--json PATH``, ...).
    """
    session.install("-e", ".[redis]", "matplotlib")
    session.run("python", "benchmarks/redis_broker.py", *session.posargs)
