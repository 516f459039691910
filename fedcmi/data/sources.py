"""Every data set by name: embedded ones (built in code) and real ones (a preparer module each).

Adding a real data set: a preparer module in ``fedcmi/data/prepare/`` (its ``source(root, ...)`` reads the
distributed layout) and one line in ``PREPARED_SOURCES``. Nothing else changes: ``fedcmi prepare`` offers
it, ``dataset=NAME data-root=DIR`` trains on it.
"""

from __future__ import annotations

EMBEDDED = ("synthetic-av", "digits-cg")  # built in code, no download (fedcmi.data.embedded)
PREPARED_SOURCES: dict[str, str] = {  # name -> preparer module
    "crema-d": "fedcmi.data.prepare.crema_d",
    "ave": "fedcmi.data.prepare.ave",
    "crisismmd": "fedcmi.data.prepare.crisismmd",
    "fsdd": "fedcmi.data.prepare.fsdd",
}
DATASET_NAMES: tuple[str, ...] = (*EMBEDDED, *PREPARED_SOURCES)


def is_prepared(name: str) -> bool:
    """A real data set, read from a directory made by ``fedcmi prepare`` (``data-root``)."""
    return name in PREPARED_SOURCES
