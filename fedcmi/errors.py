"""The errors a user can fix: the CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input (a key, a file, a folder); the message names it and the rule it broke."""


class ConfigError(UserError):
    """A configuration value broke a rule; the message names the key and the rule."""
