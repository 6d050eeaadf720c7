"""`vam train vae|video|idm`: the training stages from the command line.

Both run as one process or under `torchrun --nproc_per_node N` (DDP). A ValueError (bad
config, dataset, run folder) is reported as one line on stderr, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vam_policy.train.prepare import TrainResult


def _common(parser: argparse.ArgumentParser, family: str) -> None:
    parser.add_argument("--dataset", required=True, type=Path, help="episodes dataset folder")
    parser.add_argument("--config", default=None, metavar=f"{family}[:PRESET]|FILE.yaml",
                        help=f"preset of config/train/{family}.yaml or a YAML file (optional "
                        "with --resume: the run's saved config)")
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    parser.add_argument("--backbone", default=None, metavar="SOURCE",
                        help="backbone preset, hub id, backbone folder or policy checkpoint")
    parser.add_argument("--steps", type=int, default=None, help="override loop.steps")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run folder's latest checkpoint")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop after STEP with a checkpoint (for time-limited jobs); "
                        "--resume continues")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda:LOCAL_RANK when CUDA is there), cpu, cuda, cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-cache", action="store_true",
                        help="run the VAE on every batch instead of caching latents")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="latent cache folder (default OUT/latent_cache); share it between "
                        "runs on the same dataset and backbone")


def add_train_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `train vae`, `train video` and `train idm` to a parser's subcommands."""
    train = subparsers.add_parser("train", help="train the action decoder (idm), fine-tune "
                                  "the video backbone (video) or a random preset's VAE (vae)")
    verbs = train.add_subparsers(dest="train_verb", required=True, metavar="STAGE")
    idm = verbs.add_parser("idm", help="stage 2: the action decoder on a frozen backbone")
    _common(idm, "idm")
    _cache(idm)
    idm.add_argument("--embed-backbone", action="store_true", default=None,
                     help="copy the backbone into the checkpoints (default: only random presets)")
    idm.set_defaults(func=run_train_idm)
    video = verbs.add_parser("video", help="stage 1: LoRA on the backbone with the robot's videos")
    _common(video, "video")
    _cache(video)
    video.set_defaults(func=run_train_video)
    vae = verbs.add_parser("vae", help="stage 0 (CPU presets only): the VAE of a random-weight "
                           "backbone learns the robot's frames")
    _common(vae, "vae")
    vae.set_defaults(func=run_train_vae)


def _report(train: Callable[[], TrainResult]) -> int:
    """Run a stage; print its product's folder, or a ValueError as one line."""
    try:
        result = train()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if result.final is not None:
        print(result.final)
    return 0


def run_train_idm(args: argparse.Namespace) -> int:
    """`vam train idm`: prints the policy checkpoint folder when training finishes."""
    # deferred: torch + diffusers take seconds, and `vam --help` needs neither
    from vam_policy.train.config import IdmTrainConfig, load_train_config
    from vam_policy.train.idm import train_idm

    def train() -> TrainResult:
        config = load_train_config(args.config, IdmTrainConfig) if args.config else None
        return train_idm(args.dataset, args.out, config, backbone=args.backbone,
                         steps=args.steps, resume=args.resume, use_cache=not args.no_cache,
                         cache_dir=args.cache_dir, device=args.device,
                         embed_backbone=args.embed_backbone, stop_at=args.stop_at,
                         progress=not args.no_progress)

    return _report(train)


def run_train_video(args: argparse.Namespace) -> int:
    """`vam train video`: prints the merged backbone folder when training finishes."""
    from vam_policy.train.config import VideoTrainConfig, load_train_config
    from vam_policy.train.video import train_video

    def train() -> TrainResult:
        config = load_train_config(args.config, VideoTrainConfig) if args.config else None
        return train_video(args.dataset, args.out, config, backbone=args.backbone,
                           steps=args.steps, resume=args.resume, use_cache=not args.no_cache,
                           cache_dir=args.cache_dir, device=args.device, stop_at=args.stop_at,
                           progress=not args.no_progress)

    return _report(train)


def run_train_vae(args: argparse.Namespace) -> int:
    """`vam train vae`: prints the backbone folder when training finishes."""
    from vam_policy.train.config import VaeTrainConfig, load_train_config
    from vam_policy.train.vae import train_vae

    def train() -> TrainResult:
        config = load_train_config(args.config, VaeTrainConfig) if args.config else None
        return train_vae(args.dataset, args.out, config, backbone=args.backbone,
                         steps=args.steps, resume=args.resume, device=args.device,
                         stop_at=args.stop_at, progress=not args.no_progress)

    return _report(train)
