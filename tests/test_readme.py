"""The README's examples and commands run as written, on a machine set up as it says."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from serve_helpers import WSHUB_SERVE_READY, Server

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def command_under(heading: str) -> str:
    """The one-line shell command of the ``sh`` block right under ``## heading``."""
    text = README.read_text()
    section = text[text.index(f"## {heading}") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, f"no sh block under {heading!r}"
    lines = block.group(1).strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_the_trio_program_example_runs_and_prints_what_it_says() -> None:
    example = python_blocks()[0]
    result = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "PublishResult(stream='news', offset=1, id='evt-1', duplicate=False)",
        "news 1 {'title': 'hi'}",
    ]


def test_the_readme_names_commands_that_exist() -> None:
    text = README.read_text()
    assert "wshub serve --preset development" in text
    assert "nox -s tests" in text
    help_text = subprocess.run(
        [sys.executable, "-m", "wshub.cli", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    for command in re.findall(r"^wshub (\w[\w-]*)", text, re.M):
        assert command in help_text, f"README uses `wshub {command}`, which does not exist"


def test_the_two_commands_install_into_a_venv_never_into_the_system_python() -> None:
    # Debian 12's python3 refuses ``pip install`` outside a venv (externally-managed-environment).
    for heading in ("Run the hub", "Run the whole test suite"):
        command = command_under(heading)
        steps = [step.strip() for step in command.split("&&")]
        assert steps[0] == "python3 -m venv .venv", command
        for step in steps[1:]:
            assert step.startswith(".venv/bin/"), f"{step!r} runs outside the venv"


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    assert command_under("Run the whole test suite") in (ROOT / ".ci" / "run").read_text()


def packages_the_tests_require() -> set[str]:
    """The Debian package of every ``require_tool(tool, why, package)`` call in the tests."""
    packages = set()
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "require_tool"
            ):
                package = node.args[2]
                assert isinstance(package, ast.Constant), f"{path.name}: {ast.dump(package)}"
                packages.add(package.value)
    return packages


def test_ci_installs_every_tool_the_tests_require_and_the_readme_names_it() -> None:
    # With CI set a missing tool fails its tests: .ci/run must install it on a fresh machine.
    packages = packages_the_tests_require()
    assert {"chromium", "nodejs", "redis-server", "systemd"} <= packages
    ci = (ROOT / ".ci" / "run").read_text()
    readme = README.read_text()
    for package in packages:
        assert f"missing+=({package})" in ci, f".ci/run does not install {package}"
        assert f"`apt-get install {package}`" in readme, f"README does not name {package}"


def test_the_run_command_serves_from_a_fresh_copy_of_the_project(tmp_path: Path) -> None:
    """The README's first command, run by bash in a copy of the sources with no venv yet."""
    project = tmp_path / "wshub"
    shutil.copytree(
        ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("WSHUB_", "VIRTUAL_ENV"))}
    # Port 0 through the environment (as any deployment may): other tests use the default port.
    environ.update(WSHUB_SERVER__PORT="0", PYTHONUNBUFFERED="1")
    # ``exec`` before the last step, so that the stop signal reaches wshub rather than bash.
    *setup, serve = command_under("Run the hub").split(" && ")
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["bash", "-c", " && ".join([*setup, f"exec {serve}"])],
            cwd=project,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environ,
        )
    server = Server(process, log_path)
    try:
        server.wait_ready(WSHUB_SERVE_READY, deadline=180.0)  # pip install first
        answer = httpx.get(f"{server.http}/health", timeout=5.0)
        assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
        assert (project / ".venv" / "bin" / "wshub").exists()
    finally:
        server.stop()


def run_tests_with_only_the_venv_on_the_path(test_file: str, selection: str, ci: bool) -> str:
    """Run ``selection`` of ``tests/test_file`` with only the venv's bin on the PATH (no node,
    no systemd-analyze); the output."""
    environ = {k: v for k, v in os.environ.items() if k != "CI"}
    environ["PATH"] = str(Path(sys.executable).parent)
    if ci:
        environ["CI"] = "true"
    tests = str(ROOT / "tests" / test_file)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-k", selection, tests],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        cwd=ROOT,
    )
    return result.stdout


def run_js_tests_without_node(ci: bool) -> str:
    """Run the Node tests of tests/test_client_js.py with ``node`` off the PATH; the output."""
    return run_tests_with_only_the_venv_on_the_path("test_client_js.py", "not browser", ci)


def test_without_node_the_summary_names_the_nodejs_package() -> None:
    output = run_js_tests_without_node(ci=False)
    skips = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 2, output
    for line in skips:
        assert "Node >= 20" in line, line
        assert "apt-get install nodejs" in line, line
    assert "2 skipped" in output, output


def test_without_node_ci_fails_instead_of_skipping() -> None:
    output = run_js_tests_without_node(ci=True)
    assert "skipped" not in output, output
    assert "2 errors" in output, output


def test_without_systemd_analyze_the_summary_names_the_systemd_package() -> None:
    output = run_tests_with_only_the_venv_on_the_path("test_deploy.py", "systemd_analyze", False)
    skips = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 1 and skips[0].startswith("SKIPPED [2] "), output  # one reason, twice
    assert "systemd-analyze is needed for checking deploy/wshub.service" in skips[0]
    assert skips[0].endswith("(Debian: apt-get install systemd)"), skips[0]
    failed = run_tests_with_only_the_venv_on_the_path("test_deploy.py", "systemd_analyze", True)
    assert "skipped" not in failed and "2 failed" in failed, failed
