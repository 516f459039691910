"""The numbers the docs state about the code agree with it: the size of the default bench grid (cells,
strategies, settings, seeds, rounds, clients) wherever a sentence names `--preset default`, and every
"`key`, default N" a doc states for a configuration key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcmi.bench.plan import make_plan
from fedcmi.config.run_config import FIELDS, defaults

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(text: str) -> Iterator[str]:
    """Paragraphs joined into one line each; a line of a code block or a table row on its own."""
    fence, para = False, []
    for line in text.splitlines():
        alone = fence or line.lstrip().startswith("|")
        if line.lstrip().startswith("```") or alone or not line.strip():
            if para:
                yield " ".join(para)
                para = []
            if line.lstrip().startswith("```"):
                fence = not fence
            elif alone:
                yield line
        else:
            para.append(line.strip())
    if para:
        yield " ".join(para)


def sentences(text: str) -> Iterator[str]:
    for block in _blocks(text):
        yield from re.split(r"(?<=[.!?])\s+", block)


# a sentence about the default grid, the grid flags its command sets, and the counts it states
ABOUT_DEFAULT = re.compile(r"--preset default|default preset")
FLAGS = re.compile(r"--preset default((?:\s+--[a-z-]+\s+[^\s`]+)*)")
COUNT = re.compile(r"\b(\d[\d,]*)[ -](cells?|strateg(?:y|ies)|settings?|seeds?|rounds|clients)\b")
GRID_FLAGS = {"--strategies": "strategies", "--seeds": "seeds", "--alphas": "alphas", "--mixes": "mixes",
              "--missing-rates": "missing_rates", "--label-noise": "label_noise"}


def _default_grid_claims() -> list[tuple[str, str, dict[str, str], int, str]]:
    """(file, sentence, grid flags, number, what) for every count stated in a sentence about the default grid."""
    claims = []
    for doc in DOCS:
        for sentence in sentences(doc.read_text(encoding="utf-8")):
            if not ABOUT_DEFAULT.search(sentence):
                continue
            flags: dict[str, str] = {}
            command = FLAGS.search(sentence)
            if command:
                words = command.group(1).split()
                flags = {GRID_FLAGS[f]: v for f, v in zip(words[::2], words[1::2], strict=True) if f in GRID_FLAGS}
            for number, what in COUNT.findall(sentence):
                claims.append((doc.name, sentence, flags, int(number.replace(",", "")), what))
    return claims


def _actual(flags: dict[str, str], what: str, tmp: Path) -> int:
    plan = make_plan("default", tmp / "bench", {}, **flags)
    counts = {"cell": len(plan.cells()), "strategy": len(plan.strategies),
              "setting": len(plan.alphas) * len(plan.mixes), "seed": len(plan.seeds),
              "round": plan.base.num_server_rounds, "client": plan.base.num_clients}
    return counts[SINGULAR.get(what, what.removesuffix("s"))]


SINGULAR = {"strategies": "strategy"}


def test_every_count_the_docs_state_for_the_default_grid_is_the_codes(tmp_path):
    claims = _default_grid_claims()
    wrong = [(doc, number, what, _actual(flags, what, tmp_path), sentence[:160])
             for doc, sentence, flags, number, what in claims if number != _actual(flags, what, tmp_path)]
    assert wrong == [], "\n".join(f"{d}: says {n} {w}, the code has {a}: {s}" for d, n, w, a, s in wrong)
    stated = {(doc, what) for doc, _, flags, _, what in claims if not flags}
    # not vacuous: the README and docs/benchmark.md state the whole grid's size
    assert {("README.md", "cells"), ("README.md", "strategies"), ("benchmark.md", "cells"),
            ("benchmark.md", "strategies")} <= stated, stated


DEFAULT_STATED = re.compile(r"`([a-z][a-z0-9-]+)(?:=[^`]*)?`\)?,? \(?default:? ([^\s),;:]+)")


def test_every_default_the_docs_state_for_a_key_is_the_configs():
    """E.g. README "(`update-norm-multiple`, default 10)", reliability.md "`max-update-norm` (default 0: off)"."""
    found = []
    for doc in DOCS:
        for key, value in DEFAULT_STATED.findall(doc.read_text(encoding="utf-8")):
            if key in FIELDS:
                found.append((doc.name, key, value))
    wrong = [(doc, key, value, defaults()[key]) for doc, key, value in found
             if _parse(value) != pytest.approx(defaults()[key])]
    assert wrong == [], wrong
    assert {("README.md", "update-norm-multiple"), ("reliability.md", "update-norm-multiple"),
            ("reliability.md", "max-update-norm")} <= {(d, k) for d, k, _ in found}, found


def _parse(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value
