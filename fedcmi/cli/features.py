"""``fedcmi features``: the command-line face of :mod:`fedcmi.data.features.extract`."""

from __future__ import annotations

import argparse

FEATURES_HELP = """\
Run every sample of a prepared data set (a directory made by `fedcmi prepare`) once through frozen
pretrained encoders read from local files, and write their token embeddings as a Hugging Face data set
(frames, audio time steps and text tokens kept as tokens). Train on it with `fedcmi simulate
dataset=<name> data-root=<out> encoder=features`: only projections, projectors, classifiers and the fusion
head are trained and federated. Re-running continues an interrupted extraction and reuses a finished one.
docs/features.md has the recipes and the measured costs.

encoders (nothing is downloaded):
  --image-encoder FILE   torchvision CNN state dict (mobilenet_v2, resnet18/34/50, mobilenet_v3,
                         efficientnet_b0; torch.save(model.state_dict()) or .safetensors) for frames/images
  --audio-encoder FILE   the same kinds of state dict, run over the log spectrogram (time steps kept)
  --text-encoder DIR     a BERT-family transformers model saved with save_pretrained (crisismmd)

examples:
  fedcmi features ~/data/CREMA-D/fedcmi-prepared --image-encoder mobilenet_v2.pth --audio-encoder mobilenet_v2.pth
  fedcmi features ~/data/CrisisMMD_v2.0/fedcmi-prepared --image-encoder resnet18.pth --text-encoder ~/bert-base-uncased
"""


def add_features_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="extract frozen-encoder features of a prepared data set",
                       description=FEATURES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prepared", metavar="PREPARED_DIR", help="a directory made by `fedcmi prepare` (or its root)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: <PREPARED_DIR>-features)")
    p.add_argument("--image-encoder", metavar="FILE")
    p.add_argument("--audio-encoder", metavar="FILE")
    p.add_argument("--text-encoder", metavar="DIR")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="samples per encoder batch")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's; 1 on a busy machine)")
    p.add_argument("--shard-size", type=int, default=256, metavar="N", help="samples per resumable shard")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(resume=None, config=None, overrides=(), verbose=False, run=cmd_features)  # a tuple: no key=value


def cmd_features(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from fedcmi.config import ConfigError
    from fedcmi.data.features.extract import extract_features

    for flag in ("batch_size", "shard_size", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}={getattr(args, flag)}: must be >= 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    bar = Progress(TextColumn("[bold]features"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   disable=args.no_progress)
    task = bar.add_task("", total=None)

    def progress(done: int, total: int) -> None:  # the bar appears with the first shard, after the checks
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        outcome = extract_features(args.prepared, args.out, image=args.image_encoder, audio=args.audio_encoder,
                                   text=args.text_encoder, device=args.device, batch_size=args.batch_size,
                                   shard_size=args.shard_size, progress=progress)
    finally:
        if bar.live.is_started:
            bar.stop()
    rows = ", ".join(f"{split} {n}" for split, n in outcome.rows.items())
    shapes = ", ".join(f"{c} {'x'.join(map(str, s))}" for c, s in outcome.shapes.items())
    if outcome.already_done:
        print(f"features: already extracted in {outcome.path} ({rows}; tokens {shapes}); nothing to do")
    else:
        resumed = f", {outcome.resumed_shards} shard(s) reused" if outcome.resumed_shards else ""
        print(f"features: extracted {rows} samples into {outcome.path} (tokens {shapes}) in "
              f"{outcome.seconds:.1f} s{resumed}")
    return 0
