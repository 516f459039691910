"""The Flower ClientApp of fedcmi."""
