"""Helpers shared by test modules (which never import each other)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alma_mcp.config import AlmaConfig, parse_config


def build_config(data_dir: Path, **alma: Any) -> AlmaConfig:
    """A config on `data_dir`, undeclared agents allowed unless said otherwise; `alma` holds the
    settings of the config file's `alma:` section."""
    alma.setdefault("allow_undeclared_agents", True)
    alma.setdefault("data_dir", str(data_dir))
    return parse_config({"alma": alma})
