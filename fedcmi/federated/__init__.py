"""The federated core without Flower: the client step, aggregation rules, dominance, screening, evaluation.

``clients/`` and ``server/`` adapt these to Flower's Message API through ``fedcmi.protocol``.
"""
