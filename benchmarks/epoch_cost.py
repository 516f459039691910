"""Cost of local training at the paper's input sizes (the authors' preprocessing and ResNet-18 encoders), on
random tensors of the real shapes.

Times a few batches of one multimodal FedCMI client (fused CE + self CE + infiltration distillation with the
frozen teacher, proximal term) and of a FedAvg client, after one warm-up batch, and extrapolates to one
local epoch of a client holding 1/num_clients of the training set. No data set is needed.

    python benchmarks/epoch_cost.py --dataset crema-d --batches 3 --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedcmi.config import effective
from fedcmi.data.base import ClientData
from fedcmi.dominance import Guidance
from fedcmi.methods.base import TrainSettings, local_update
from fedcmi.methods.registry import method_spec
from fedcmi.models import build_model

# shape of a, shape of b, classes, training-set size (the authors' preprocessing)
PAPER = {
    "crema-d": ((1, 257, 299), (3, 2, 224, 224), 6, 6698),
    "ave": ((1, 257, 1004), (3, 4, 224, 224), 28, 3339),
}


def time_batches(dataset: str, strategy: str, batches: int, batch_size: int, device: str) -> float:
    """Seconds per training batch (mean over ``batches`` after a warm-up batch)."""
    shape_a, shape_b, k, _ = PAPER[dataset]
    spec = method_spec(strategy)
    cfg = effective({"strategy": strategy, "lr": 1e-3, "local-epochs": 1, "batch-size": batch_size,
                     **({"proximal-mu": 1.0} if spec.decomposed else {})})
    decomposed = spec.decomposed
    model = build_model("resnet18", (shape_a, shape_b), k, 512, decomposed).to(device)
    settings = TrainSettings.of(cfg, spec)
    guidance = Guidance(infiltrate=decomposed, dominant="a", tau=np.ones(k))
    gen = torch.Generator().manual_seed(0)

    def data(n: int) -> ClientData:
        return ClientData(torch.randn((n, *shape_a), generator=gen), torch.randn((n, *shape_b), generator=gen),
                          torch.randint(0, k, (n,), generator=gen)).to(device)

    local_update(model, data(batch_size), spec.build(cfg), guidance, settings, num_classes=k)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    local_update(model, data(batches * batch_size), spec.build(cfg), guidance, settings, num_classes=k)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(PAPER), default="crema-d")
    ap.add_argument("--strategies", default="fedcmi,fedavg")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--num-clients", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_train = PAPER[args.dataset][3]
    per_client = n_train // args.num_clients
    steps = -(-per_client // args.batch_size)
    for strategy in args.strategies.split(","):
        s = time_batches(args.dataset, strategy, args.batches, args.batch_size, args.device)
        print(f"{args.dataset} {strategy:6s} {args.device} threads={args.threads} batch={args.batch_size}: "
              f"{s:.2f} s/batch -> one local epoch of a client with {per_client} samples ({steps} batches) "
              f"~ {s * steps / 60:.1f} min; whole training set ({-(-n_train // args.batch_size)} batches) "
              f"~ {s * -(-n_train // args.batch_size) / 60:.1f} min")


if __name__ == "__main__":
    main()
