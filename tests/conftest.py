"""Shared test configuration."""

from __future__ import annotations

import os

from hypothesis import settings

# Hypothesis: no wall-clock deadlines (the machines are shared and noisy); in CI a fixed,
# larger budget and derandomized runs so a failure reproduces.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, max_examples=200)
settings.load_profile("ci" if os.environ.get("CI") else "default")
