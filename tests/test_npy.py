"""Reading .npy bytes from several threads at once (CPython 3.11's AST race, python/cpython#106905)."""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedcmi import npy


class _Garbage:
    """A cycle with a finalizer: collecting it runs Python code, so the GIL may change hands mid-parse."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        sum(range(50))


def _hammer(reads: list[Callable[[], object]], seconds: float = 1.5) -> list[str]:
    """Each read in its own thread, over and over, with a tiny switch interval; the SystemErrors raised."""
    errors: list[str] = []
    stop = time.monotonic() + seconds

    def loop(read: Callable[[], object]) -> None:
        while time.monotonic() < stop:
            for _ in range(5):
                _Garbage()
            try:
                read()
            except SystemError as exc:
                errors.append(str(exc))

    interval, thresholds = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(1e-6)
    gc.set_threshold(20, 5, 5)
    try:
        threads = [threading.Thread(target=loop, args=(r,)) for r in reads]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
        gc.set_threshold(*thresholds)
    return errors


def test_every_npy_reader_is_safe_from_several_threads(tmp_path):
    record = ArrayRecord({"w": Array(np.arange(288, dtype=np.float32).reshape(32, 1, 3, 3)),
                          "b": Array(np.ones(4, dtype=np.float64))})
    np.save(tmp_path / "x.npy", np.arange(6).reshape(2, 3))
    np.savez(tmp_path / "f.npz", kinds=np.array(["a", "ab"]), sizes=np.array([3, 4]))
    raw = _hammer([lambda: record["w"].numpy()] * 3)  # the control: unguarded, it must race on CPython 3.11
    if not raw:  # then nothing here can show what the lock does (a Python whose AST state is per thread)
        pytest.skip(f"unguarded Array.numpy() did not race in 1.5 s on Python {sys.version.split()[0]}: "
                    "no control for the lock")
    assert "AST constructor recursion depth mismatch" in raw[0]
    guarded = _hammer([lambda: npy.record_arrays(record), lambda: npy.record_state_dict(record),
                       lambda: npy.load(tmp_path / "x.npy", mmap_mode="c"), lambda: npy.load_npz(tmp_path / "f.npz")])
    assert guarded == []
    # and they read what was written
    assert np.array_equal(npy.record_arrays(record, ["w"])["w"], record["w"].numpy())
    assert npy.record_state_dict(record)["b"].tolist() == [1.0] * 4
    assert npy.load(tmp_path / "x.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
    got = npy.load_npz(tmp_path / "f.npz")
    assert got["kinds"].tolist() == ["a", "ab"] and got["sizes"].tolist() == [3, 4]
