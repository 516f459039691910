"""Show the modality imbalance of a data set is real (centralized training).

For each data set: each encoder trained alone, and each modality through a jointly trained concat model
with the other slot zeroed. The weak modality loses accuracy in joint training. With ``--prepared DIR`` (a
directory made by ``fedcmi prepare``, repeatable) the prepared data sets instead of the embedded ones, and a
linear probe first: multinomial logistic regression on each modality's standardised inputs alone and on both.

    python benchmarks/imbalance.py [--epochs 6]
    python benchmarks/imbalance.py --prepared ~/data/fsdd-prepared [--encoder cnn-rows] [--no-linear-probe]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedcmi.bench.centralized_imbalance import imbalance_report
from fedcmi.data.base import MultimodalData
from fedcmi.models.registry import encoder_names


def linear_probe(data: MultimodalData, seed: int = 0) -> dict[str, float]:
    """Test accuracy of logistic regression on each modality alone and on both (inputs flattened, standardised
    with the training split's statistics)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xa, xb, y = (np.asarray(t) for t in data.arrays("train"))
    ta, tb, ty = data.arrays("test")
    flat = {data.modalities[0]: (xa.reshape(len(xa), -1), ta.reshape(len(ta), -1)),
            data.modalities[1]: (xb.reshape(len(xb), -1), tb.reshape(len(tb), -1))}
    flat["both"] = tuple(np.concatenate([flat[m][i] for m in data.modalities], axis=1) for i in (0, 1))
    out = {}
    for name, (train, test) in flat.items():
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1, random_state=seed))
        clf.fit(train, y)
        out[name] = float((clf.predict(test) == ty).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    trainable = [n for n in encoder_names() if n != "features"]  # features needs a features directory
    parser.add_argument("--encoder", default="cnn", choices=trainable, help="the encoder a run would train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-linear-probe", action="store_true", help="with --prepared: skip the linear probe")
    parser.add_argument("--prepared", action="append", metavar="DIR", help="a prepared data set (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.prepared:
        from fedcmi.data import load_prepared

        sets = [load_prepared(p) for p in args.prepared]
    else:
        from fedcmi.data.embedded import digits_cg, synthetic_av

        sets = [synthetic_av(), digits_cg()]
    if args.prepared and not args.no_linear_probe:
        print(f"{'data set':<14}{'inputs':<10}{'logistic regression (test accuracy)':>36}")
        for data in sets:
            t0 = time.perf_counter()
            probe = linear_probe(data)
            for name, acc in probe.items():
                print(f"{data.name:<14}{name:<10}{acc:>36.3f}")
            print(f"{data.name:<14}({time.perf_counter() - t0:.1f} s)")
    print(f"{'data set':<14}{'modality':<10}{'alone':>8}{'in joint':>10}{'gap':>8}")
    for data in sets:
        t0 = time.perf_counter()
        rep = imbalance_report(data, epochs=args.epochs, seed=args.seed, encoder=args.encoder)
        for m in rep.modalities:
            print(f"{data.name:<14}{m:<10}{rep.alone[m]:>8.3f}{rep.in_joint[m]:>10.3f}"
                  f"{rep.alone[m] - rep.in_joint[m]:>8.3f}")
        print(f"{data.name:<14}{'joint mm':<10}{rep.joint_mm:>8.3f}   weak modality: {rep.weak}"
              f"   ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
