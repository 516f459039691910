"""``python -m fedcmi.cli``: the ``fedcmi`` command."""

import sys

from fedcmi.cli import main

sys.exit(main())
