"""Running fedcmi: the Flower simulation launcher, the loopback deployment, devices, the dispatch patch."""
