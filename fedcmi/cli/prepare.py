"""``fedcmi prepare``: the command-line face of :mod:`fedcmi.data.prepare`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PREPARE_HELP = """\
Read a real data set in the layout it is distributed in, compute the model inputs of the FedCMI authors'
preprocessing and write a
Hugging Face data set (Arrow, official train/test split) that `fedcmi simulate dataset=<name>
data-root=<root>` loads. Re-running skips finished work; unreadable files are skipped, counted and named
in <out>/prepare-report.txt. docs/datasets.md gives each layout.

examples:
  fedcmi prepare crema-d --root ~/data/CREMA-D
  fedcmi prepare ave --root ~/data/AVE_Dataset --frames 4
  fedcmi prepare crisismmd --root ~/data/CrisisMMD_v2.0 --tokenizer bert-base-uncased
  fedcmi prepare fsdd --root ~/data/free-spoken-digit-dataset --out ~/data/fsdd-prepared
  fedcmi prepare fsdd --root ~/data/free-spoken-digit-dataset --images ~/data/mnist --seed 1
"""


def add_prepare_parser(sub: argparse._SubParsersAction) -> None:
    from fedcmi.data.sources import PREPARED_SOURCES  # the names only: fedcmi.data.prepare imports datasets

    p = sub.add_parser("prepare", help="prepare a real data set (CREMA-D, AVE, CrisisMMD, FSDD)",
                       description=PREPARE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=tuple(PREPARED_SOURCES))
    p.add_argument("--root", required=True, metavar="DIR", help="the data set as distributed")
    p.add_argument("--out", metavar="DIR", help="output directory (default: <root>/fedcmi-prepared)")
    p.add_argument("--frames", type=int, metavar="F", help="video frames per clip (crema-d: 2, ave: 4)")
    p.add_argument("--image-size", type=int, metavar="S", help="frame/image side in pixels (default 224)")
    p.add_argument("--tokenizer", metavar="NAME|DIR", help="crisismmd: tokenizer (default bert-base-uncased)")
    p.add_argument("--max-length", type=int, metavar="N", help="crisismmd: tokens per tweet (default 40)")
    p.add_argument("--images", metavar="MNIST_DIR", help="fsdd: pair the clips with MNIST digits read from the IDX "
                   "files in this folder (default: scikit-learn's bundled 8x8 digits)")
    p.add_argument("--seed", type=int, help="crema-d without train.csv/test.csv: seed of the 90/10 split; fsdd: seed "
                   "of the clip-image pairing (default 0)")
    p.add_argument("--shard-size", type=int, default=256, metavar="N", help="samples per resumable shard")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(resume=None, config=None, overrides=(), verbose=False, run=cmd_prepare)  # a tuple: no key=value


def cmd_prepare(args: argparse.Namespace) -> int:
    from fedcmi.config import ConfigError
    from fedcmi.data.prepare import prepare

    for flag in ("frames", "image_size", "max_length", "shard_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}={value}: must be >= 1")
    options = {"frames": args.frames, "image_size": args.image_size, "tokenizer": args.tokenizer,
               "max_length": args.max_length, "seed": args.seed, "images": args.images}
    outcome = prepare(args.dataset, Path(args.root), args.out, show_progress=not args.no_progress,
                      shard_size=args.shard_size, **options)
    rows = ", ".join(f"{split} {n}" for split, n in outcome.rows.items())
    if outcome.already_done:
        print(f"{args.dataset}: already prepared in {outcome.path} ({rows}); nothing to do")
    else:
        resumed = f", {outcome.resumed_shards} shard(s) reused" if outcome.resumed_shards else ""
        print(f"{args.dataset}: prepared {rows} samples into {outcome.path}{resumed}")
    if outcome.skipped:
        print(f"{args.dataset}: skipped {len(outcome.skipped)} sample(s), listed in {outcome.report_path}:",
              file=sys.stderr)
        for s in outcome.skipped[:5]:
            print(f"  {s.file}: {s.reason}", file=sys.stderr)
        if len(outcome.skipped) > 5:
            print(f"  ... and {len(outcome.skipped) - 5} more", file=sys.stderr)
    return 0
