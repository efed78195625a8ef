"""wshub: a resilient WebSocket hub for Trio."""

from __future__ import annotations

from wshub.config import ConfigError, HubConfig

__all__ = ["ConfigError", "HubConfig"]
