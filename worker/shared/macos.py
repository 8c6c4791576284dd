"""Facts of a Mac host that the head and its agent both use."""

from __future__ import annotations

from pathlib import Path

SOCKETFILTERFW = "/usr/libexec/ApplicationFirewall/socketfilterfw"  # the application firewall's command
DEFAULT_METAL_VENV = Path("~/.venv-vllm-metal")  # where vllm-metal's install.sh puts its venv
