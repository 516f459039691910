"""The numbers the docs state about the code agree with it: the size of a bench grid (cells, strategies,
settings, seeds, rounds, clients) wherever a sentence names its preset (`--preset default`, "the default
preset", `--preset quick`, ...; with the grid flags of the command it quotes), and every "`key`, default N" a
doc states for a configuration key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcmi.bench.plan import BENCH_PRESETS, make_plan
from fedcmi.config import parse_overrides
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


# a sentence about a preset's grid, the grid flags its command sets, and the counts it states
PRESET = re.compile(r"--preset (" + "|".join(map(re.escape, BENCH_PRESETS)) + r")\b"
                    r"((?:\s+--[a-z-]+\s+[^\s`]+|\s+[a-z][a-z0-9-]*=[^\s`]+)*)|(default) preset")
COUNT = re.compile(r"\b(\d[\d,]*)[ -](cells?|strateg(?:y|ies)|settings?|seeds?|rounds|clients)\b")
GRID_FLAGS = {"--strategies": "strategies", "--seeds": "seeds", "--alphas": "alphas", "--mixes": "mixes",
              "--missing-rates": "missing_rates", "--label-noise": "label_noise"}


def _grid_claims() -> list[tuple[str, str, str, dict[str, Any], int, str]]:
    """(file, sentence, preset, grid flags, number, what) for every count stated in a sentence that names one
    preset (a sentence naming two is left out: which count is whose is not for a regex to say)."""
    claims = []
    for doc in DOCS:
        for sentence in sentences(doc.read_text(encoding="utf-8")):
            named = PRESET.findall(sentence)
            if len({p or d for p, _, d in named}) != 1:
                continue
            preset, command, default = named[0]
            flags, words = {}, command.split()
            while words:  # --flag value, or key=value (the grid's base keys)
                word = words.pop(0)
                if word.startswith("--"):
                    value = words.pop(0)
                    if word in GRID_FLAGS:
                        flags[GRID_FLAGS[word]] = value
                else:
                    flags.setdefault("keys", []).append(word)
            for number, what in COUNT.findall(sentence):
                claims.append((doc.name, sentence, preset or default, flags, int(number.replace(",", "")), what))
    return claims


def _actual(preset: str, flags: dict[str, Any], what: str, tmp: Path) -> int:
    flags = dict(flags)
    plan = make_plan(preset, tmp / "bench", parse_overrides(flags.pop("keys", [])), **flags)
    counts = {"cell": len(plan.cells()), "strategy": len(plan.strategies),
              "setting": len(plan.alphas) * len(plan.mixes), "seed": len(plan.seeds),
              "round": plan.base.server.num_server_rounds, "client": plan.base.federation.num_clients}
    return counts[SINGULAR.get(what, what.removesuffix("s"))]


SINGULAR = {"strategies": "strategy"}


def test_every_count_the_docs_state_for_a_bench_grid_is_the_codes(tmp_path):
    claims = _grid_claims()
    wrong = [(doc, number, what, actual, sentence[:160]) for doc, sentence, preset, flags, number, what in claims
             if number != (actual := _actual(preset, flags, what, tmp_path))]
    assert wrong == [], "\n".join(f"{d}: says {n} {w}, the code has {a}: {s}" for d, n, w, a, s in wrong)
    stated = {(doc, preset, what) for doc, _, preset, flags, _, what in claims if not flags}
    # not vacuous: the README and docs/benchmark.md state the whole default grid's size
    assert {("README.md", "default", "cells"), ("README.md", "default", "strategies"),
            ("benchmark.md", "default", "cells"), ("benchmark.md", "default", "strategies")} <= stated, stated


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
