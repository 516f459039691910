"""The on-disk cache of embedded data sets: same data, built once, memory-mapped, safe fallbacks."""

from __future__ import annotations

import numpy as np

from fedcmi.data.cache import CACHE_ENV, cached
from fedcmi.data.embedded import synthetic_av


def _builder(calls: list[int]):
    def build():
        calls.append(1)
        return synthetic_av(num_classes=4, train_size=120, test_size=40)

    return build


def test_cached_data_equal_built_once_and_mapped(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    calls: list[int] = []
    first = cached("synthetic-av", (4, 120, 40), _builder(calls))
    second = cached("synthetic-av", (4, 120, 40), _builder(calls))
    assert calls == [1]
    ref = synthetic_av(num_classes=4, train_size=120, test_size=40)
    for data in (first, second):
        assert (data.name, data.modalities, data.num_classes) == (ref.name, ref.modalities, ref.num_classes)
        assert len(data.train) == 120 and data.train["label"] == ref.train["label"]
        for split in ("train", "test"):
            for got, want in zip(data.arrays(split), ref.arrays(split), strict=True):
                assert got.dtype == want.dtype and np.array_equal(got, want)
    xa = second.arrays("train")[0]
    assert isinstance(xa, np.memmap) and xa.flags.writeable  # copy-on-write: torch.from_numpy takes it
    cached("synthetic-av", (4, 121, 40), _builder(calls))
    assert calls == [1, 1]  # other parameters, other entry
    assert not list(tmp_path.glob(".*.tmp"))


def test_cache_off_and_unwritable_folder_build_in_memory(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setenv(CACHE_ENV, "off")
    cached("synthetic-av", (4, 120, 40), _builder(calls))
    cached("synthetic-av", (4, 120, 40), _builder(calls))
    assert calls == [1, 1]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker))
    data = cached("synthetic-av", (4, 120, 40), _builder(calls))
    assert len(data.train) == 120 and calls == [1, 1, 1]
