"""Cost of one central evaluation per ``eval-batch-size``, and whether every path's predictions stay the same.

Builds the run's model (seeded, untrained) and test set, then times ``predict_paths`` (every evaluation path,
one encoder pass per modality) over the whole test set at each batch size, the sizes interleaved so that a
drift in the machine's speed reaches them all alike, with ``--threads`` torch threads (the pipelined
evaluation thread uses one). Every path's logits are compared with those at the first size, bit for bit:
batch size does not change the arithmetic of one sample, but a backend may pick another kernel for another
batch shape, and the comparison says whether it did here.

    python benchmarks/eval_batch.py [--sizes 512 256 128 64] [--threads 1] [--repeat 15] [key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fedcmi.config import effective, parse_overrides  # noqa: E402
from fedcmi.data.registry import load_data  # noqa: E402
from fedcmi.federated.evaluation import predict_paths  # noqa: E402
from fedcmi.methods.registry import method_spec  # noqa: E402
from fedcmi.models.build import ModelSpec, model_for  # noqa: E402


@torch.no_grad()
def all_logits(model: torch.nn.Module, xa: torch.Tensor, xb: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(xa), batch_size):
        sl = slice(start, start + batch_size)
        for path, logits in model.path_logits(xa[sl], xb[sl]).items():
            out.setdefault(path, []).append(logits)
    return {path: torch.cat(parts) for path, parts in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 256, 128, 64])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    if min(*args.sizes, args.threads, args.repeat) < 1:
        parser.error("--sizes, --threads and --repeat must be at least 1")
    torch.set_num_threads(args.threads)
    cfg = effective(parse_overrides(args.overrides)).check_run()
    data = load_data(cfg)
    xa, xb, _ = (torch.from_numpy(t) for t in data.arrays("test"))
    torch.manual_seed(cfg.federation.seed)
    model = model_for(cfg.model, ModelSpec.of(data), method_spec(cfg.method.strategy).decomposed).eval()
    print(f"{cfg.data.dataset}, {len(xa)} test samples, encoder {cfg.model.encoder}, strategy {cfg.method.strategy}, "
          f"{args.threads} torch thread(s), median of {args.repeat}")
    logits = {size: all_logits(model, xa, xb, size) for size in args.sizes}  # also the warm-up
    times: dict[int, list[float]] = {size: [] for size in args.sizes}
    for _ in range(args.repeat):  # sizes interleaved, so a drift in the machine's speed reaches them all alike
        for size in args.sizes:
            start = time.perf_counter()
            predict_paths(model, xa, xb, size)  # what the server's evaluation runs
            times[size].append(time.perf_counter() - start)
    reference = logits[args.sizes[0]]
    for size in args.sizes:
        same = ("(reference)" if size == args.sizes[0] else "identical"
                if all(torch.equal(logits[size][p], reference[p]) for p in reference) else "DIFFERENT")
        ms = sorted(1000 * t for t in times[size])
        print(f"eval-batch-size={size:<5d} {statistics.median(ms):8.1f} ms per evaluation (range {ms[0]:.1f}-"
              f"{ms[-1]:.1f})   logits {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
