"""The Flower ServerApp and strategies of fedcmi."""
