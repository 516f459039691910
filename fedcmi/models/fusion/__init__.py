"""Fusion heads over two ``dim``-wide slots, one file each (``fusion=NAME``; the names and their builders:
``fusion.FUSIONS`` in ``fedcmi/models/registry.py``)."""
