"""A ClientApp that does nothing (Flower requires one; the probe never sends messages)."""

from flwr.clientapp import ClientApp

app = ClientApp()
