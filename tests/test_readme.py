"""The README's examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


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
