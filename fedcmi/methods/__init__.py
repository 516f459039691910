"""Local methods: one file each, a :class:`~fedcmi.methods.base.MethodSpec` per name, one registry.

Adding a method: a new file here with its ``LocalMethod`` and ``MethodSpec``, and one line in
``registry.py``. Nothing else changes: the local loop, the client step, the strategy and the bench read
the spec (its model, the modalities it trains, its keys, its defaults and its evaluation paths).
"""
