"""Show the modality imbalance of the embedded data sets is real (centralized training).

For each data set: each encoder trained alone, and each modality through a jointly trained concat model
with the other slot zeroed. The weak modality loses accuracy in joint training.

    python benchmarks/imbalance.py [--epochs 6]
"""

from __future__ import annotations

import argparse
import time

import torch

from fedcmi.bench.centralized_imbalance import imbalance_report
from fedcmi.data.embedded import digits_cg, synthetic_av


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"{'data set':<14}{'modality':<10}{'alone':>8}{'in joint':>10}{'gap':>8}")
    for data in (synthetic_av(), digits_cg()):
        t0 = time.perf_counter()
        rep = imbalance_report(data, epochs=args.epochs)
        for m in rep.modalities:
            print(f"{data.name:<14}{m:<10}{rep.alone[m]:>8.3f}{rep.in_joint[m]:>10.3f}"
                  f"{rep.alone[m] - rep.in_joint[m]:>8.3f}")
        print(f"{data.name:<14}{'joint mm':<10}{rep.joint_mm:>8.3f}   weak modality: {rep.weak}"
              f"   ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
