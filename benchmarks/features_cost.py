"""Cost of features mode at the paper's sizes, on random tensors of the real shapes (no data set needed).

1. Extraction (``fedcmi features``): seconds per sample of the frozen encoders over CREMA-D's prepared inputs
   (spectrogram 1 x 257 x 299, frames 3 x 2 x 224 x 224), through the same code
   (``fedcmi.data.features.encoders``) and a randomly initialised torchvision state-dict file of the named
   architecture (same compute as the pretrained one).
2. Training (``encoder=features``): seconds per local batch of FedCMI and FedAvg on the token embeddings the
   extraction gives (``T x D`` per modality), through ``methods.base.local_update``, then seconds per round
   of the paper's federation (``--clients-per-round`` clients x ``--epochs`` local epochs over 1/num_clients of
   the training set), with ``--cores // --threads`` clients side by side (Ray with client-num-cpus=threads).

On a shared or busy machine use ``--threads 1``: two torch threads per process on two contended cores are
far slower than one (docs/features.md has the measurement).

    python benchmarks/features_cost.py --arch mobilenet_v2 --threads 1 --cores 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedcmi.config import effective
from fedcmi.data.base import ClientData
from fedcmi.data.features.encoders import audio_encoder, image_encoder
from fedcmi.dominance import Guidance
from fedcmi.methods.base import TrainSettings, local_update
from fedcmi.methods.registry import method_spec
from fedcmi.models import build_model

# prepared shape of a, of b, classes, training-set size, test-set size (the authors' preprocessing)
PAPER = {"crema-d": ((1, 257, 299), (3, 2, 224, 224), 6, 6698, 744),
         "ave": ((1, 257, 1004), (3, 4, 224, 224), 28, 3339, 402)}


def extraction(dataset: str, arch: str, samples: int, batch: int) -> tuple[float, tuple[int, ...], tuple[int, ...]]:
    """(seconds per sample for both modalities, token shape of a, token shape of b)."""
    import torchvision.models as tvm

    shape_a, shape_b = PAPER[dataset][:2]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{arch}.pth"
        torch.save(getattr(tvm, arch)(weights=None).state_dict(), path)
        enc_a, enc_b = audio_encoder(path, torch.device("cpu")), image_encoder(path, torch.device("cpu"))
    xa, xb = torch.randn(batch, *shape_a), torch.randn(batch, *shape_b)
    with torch.inference_mode():
        ta, tb = enc_a.encode(xa[:1]), enc_b.encode(xb[:1])  # warm-up
        start = time.perf_counter()
        for _ in range(max(1, samples // batch)):
            enc_a.encode(xa)
            enc_b.encode(xb)
    return (time.perf_counter() - start) / (max(1, samples // batch) * batch), tuple(ta.shape[1:]), tuple(tb.shape[1:])


def train_batch(strategy: str, tokens: tuple[tuple[int, ...], tuple[int, ...]], k: int, batch_size: int,
                batches: int, dim: int) -> float:
    """Seconds per local training batch of a multimodal client on token embeddings."""
    spec = method_spec(strategy)
    cfg = effective({"strategy": strategy, "lr": 1e-3, "local-epochs": 1, "batch-size": batch_size,
                     "encoder": "features", "dataset": "crema-d", "data-root": "-",
                     **({"proximal-mu": 1.0} if spec.decomposed else {})})
    model = build_model("features", tokens, k, dim, spec.decomposed)
    settings = TrainSettings.of(cfg, spec)
    guidance = Guidance(infiltrate=spec.decomposed, dominant="a", tau=np.ones(k))
    gen = torch.Generator().manual_seed(0)

    def data(n: int) -> ClientData:
        return ClientData(torch.randn((n, *tokens[0]), generator=gen), torch.randn((n, *tokens[1]), generator=gen),
                          torch.randint(0, k, (n,), generator=gen))

    local_update(model, data(batch_size), spec.build(cfg), guidance, settings, num_classes=k)  # warm-up
    start = time.perf_counter()
    local_update(model, data(batches * batch_size), spec.build(cfg), guidance, settings, num_classes=k)
    return (time.perf_counter() - start) / batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(PAPER), default="crema-d")
    ap.add_argument("--arch", default="mobilenet_v2", help="torchvision CNN for frames and spectrograms")
    ap.add_argument("--samples", type=int, default=16, help="samples timed for the extraction")
    ap.add_argument("--extract-batch", type=int, default=8)
    ap.add_argument("--strategies", default="fedcmi,fedavg")
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--feature-dim", type=int, default=512)
    ap.add_argument("--num-clients", type=int, default=10)
    ap.add_argument("--clients-per-round", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (per client)")
    ap.add_argument("--cores", type=int, default=2, help="cores of the machine: clients side by side")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, _, k, n_train, n_test = PAPER[args.dataset]
    per_sample, tok_a, tok_b = extraction(args.dataset, args.arch, args.samples, args.extract_batch)
    total = n_train + n_test
    print(f"{args.dataset} extraction ({args.arch}, cpu, threads={args.threads}): {per_sample:.3f} s/sample "
          f"(spectrogram -> {tok_a[0]}x{tok_a[1]} tokens, frames -> {tok_b[0]}x{tok_b[1]}); all {total} samples "
          f"~ {per_sample * total / 60:.1f} min, once")
    per_client = n_train // args.num_clients
    steps = -(-per_client // args.batch_size)
    for strategy in args.strategies.split(","):
        s = train_batch(strategy, (tok_a, tok_b), k, args.batch_size, args.batches, args.feature_dim)
        epoch = s * steps
        side_by_side = max(1, args.cores // args.threads)
        round_s = epoch * args.epochs * -(-args.clients_per_round // side_by_side)
        print(f"{args.dataset} {strategy:6s} encoder=features feature-dim={args.feature_dim} batch={args.batch_size} "
              f"threads={args.threads}: {s * 1000:.1f} ms/batch -> one local epoch of a client with {per_client} "
              f"samples ({steps} batches) ~ {epoch:.2f} s; one round ({args.clients_per_round} clients x "
              f"{args.epochs} epochs, {min(side_by_side, args.clients_per_round)} side by side) ~ {round_s:.0f} s")


if __name__ == "__main__":
    main()
