"""The argument parser of every ``fedcmi`` command: one error style, and key=value wherever it stands."""

from __future__ import annotations

import argparse
import re
from typing import Any, NoReturn

from fedcmi.errors import did_you_mean

_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<word>[^']*)' \(choose from (?P<choices>.*)\)$")


class Parser(argparse.ArgumentParser):
    """argparse with the one error style of every fedcmi command: ``fedcmi: error: ...`` in one line, exit 2.

    The commands' subparsers are of this class too (argparse makes them of their parent's class)."""

    def error(self, message: str, prog: str | None = None) -> NoReturn:
        bad = _INVALID_CHOICE.search(message)
        if bad:  # a mistyped command or choice: the closest one
            choices = [c.strip(" '") for c in bad["choices"].split(",")]
            message += did_you_mean(bad["word"], choices)
        self.exit(2, f"fedcmi: error: {message} (see `{prog or self.prog} --help`)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if isinstance(getattr(parsed, "overrides", None), list):  # key=value after an option: still a key
            keys = [e for e in extras if "=" in e and not e.startswith("-")]
            parsed.overrides += keys
            extras = [e for e in extras if e not in keys]
        if extras:  # argparse reports them from the top parser; the help to read is the command's
            command = getattr(parsed, "command", None)
            self.error(f"unrecognized arguments: {' '.join(extras)}", f"{self.prog} {command}" if command else None)
        return parsed
