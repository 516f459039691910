"""Optional packages (pip extras), found without importing them: an import can take seconds, and a
configuration that needs a missing one is refused with one line before anything starts."""

from __future__ import annotations

import importlib.util

from fedcmi.errors import ConfigError

WANDB_HINT = "pip install wandb (or pip install 'fedcmi[wandb]'), or set wandb=false"


def installed(package: str) -> bool:
    """Whether ``import package`` can succeed, without importing it."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken or blocked entry in sys.modules
        return False


def require_wandb() -> None:
    """The one-line config error of ``wandb=true`` without the package (``fedcmi.runs.wandb_log`` logs to it)."""
    if not installed("wandb"):
        raise ConfigError(f"wandb=true: the wandb package is not installed; {WANDB_HINT}")
