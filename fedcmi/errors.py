"""The errors a user can fix: the CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input (a key, a file, a folder); the message names it and the rule it broke."""


class ConfigError(UserError):
    """A configuration value broke a rule; the message names the key and the rule."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` when a choice is close to ``word`` (difflib), else ``""``: the tail of an error
    about an unknown name (a key, a strategy, a preset, a command)."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.65)
    return f"; did you mean {close[0]!r}?" if close else ""
