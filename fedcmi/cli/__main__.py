"""``python -m fedcmi.cli``: the ``fedcmi`` command."""

from fedcmi.cli import run

run()
