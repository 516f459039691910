"""``fedcmi bench``: the grid plan (``plan``), its reports (``report``) and the centralized imbalance check."""
