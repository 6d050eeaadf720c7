"""Set-up the stages share: the policy a dataset calls for, the backbone, the latent source,
and `open_stage`, the start and end of every stage's entry function."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np
import torch

from vam_policy.data.dataset import Dataset, load_dataset
from vam_policy.model.backbone_config import is_preset
from vam_policy.model.checkpoint import BACKBONE_DIR, read_manifest
from vam_policy.model.policy import VAMPolicy
from vam_policy.model.policy_config import PolicyConfig, policy_preset
from vam_policy.train.config import ConfigError, LoopConfig, OptimConfig, PolicySpec, SampleConfig
from vam_policy.train.distributed import Dist, init_distributed
from vam_policy.train.latent_cache import (
    CacheReport,
    LatentCache,
    LatentSource,
    LiveLatents,
    prepare_cache,
)
from vam_policy.train.loop import RUN_FILE, RunDir, Stage, resolve_config, run_stage, start_run
from vam_policy.train.samples import SampleSpec, episode_clip

CACHE_DIR = "latent_cache"
CALIBRATION_CLIPS = 64
"""History clips, spread over the train episodes, that set a random VAE's latent statistics."""
CALIBRATION_CLIPS_PER_EPISODE = 8


def resolve_backbone(source: str) -> str:
    """A backbone source from a preset, hub id, backbone folder or VAM policy checkpoint.

    A policy checkpoint stands for its backbone: the embedded `backbone/` folder or the
    source its manifest references.
    """
    folder = Path(source)
    if (folder / "vam_policy.json").is_file():
        manifest = read_manifest(folder)
        if manifest["backbone"] == "embedded":
            return str((folder / BACKBONE_DIR).resolve())
        return str(manifest["backbone"])
    if folder.is_dir():
        if not (folder / "transformer").is_dir() or not (folder / "vae").is_dir():
            raise ValueError(f"backbone {folder}: expected a folder with transformer/ and vae/ "
                             "(a `vam train video` output) or a VAM policy checkpoint")
        return str(folder.resolve())
    return source


def build_policy_config(spec: PolicySpec, dataset: Dataset,
                        backbone: str | None = None) -> PolicyConfig:
    """The policy `spec` describes, for the dataset's joints and cameras.

    `backbone` (the CLI's --backbone) wins over `spec.backbone`; the other backbone settings
    (history, text encoder) stay the preset's, except that a local Cosmos folder
    with `text_encoder/` and `tokenizer/` also supplies the T5 encoder, so an offline copy of
    the hub repo needs no second download. Frame `height`/`width` overrides (one camera's
    view; the dataset's cameras are tiled side by side) resize the decoder's video-token grid
    with the backbone's.
    """
    overrides = {k: v for k, v in (("fps", spec.fps), ("action_dt", spec.action_dt)) if v}
    cameras = len(dataset.camera_topics)
    base = policy_preset(spec.preset, joint_names=dataset.joint_names, cameras=cameras,
                         action_representation=spec.action_representation, **overrides)
    source = backbone or spec.backbone
    width = spec.width * cameras if spec.width is not None else None
    bb_overrides = {k: v for k, v in (("read_layer", spec.read_layer), ("tau_v", spec.tau_v),
                                      ("height", spec.height), ("width", width))
                    if v is not None}
    if source:
        bb_overrides["source"] = resolve_backbone(source)
        folder = Path(bb_overrides["source"])
        if base.backbone.text_encoder == "t5" and all(
            (folder / sub).is_dir() for sub in ("text_encoder", "tokenizer")
        ):
            bb_overrides["text_encoder_source"] = str(folder)
    config = base.with_backbone(**bb_overrides)
    decoder = {k: v for k, v in (("horizon", spec.horizon), ("width", spec.decoder_width),
                                 ("depth", spec.decoder_depth)) if v is not None}
    if spec.instruction_readout is not None:
        decoder["instruction_readout"] = spec.instruction_readout
        decoder["readout_frames"] = (config.backbone.history_latent_frames
                                     if spec.instruction_readout else 0)
    if decoder:
        try:
            config = dataclasses.replace(
                config, decoder=dataclasses.replace(config.decoder, **decoder))
        except ValueError as error:
            raise ConfigError(f"policy: {error}") from None
    return config


def run_backbone(out: Path, backbone: str | None, resume: bool) -> str | None:
    """--backbone, or on --resume without it the backbone the run was started with."""
    if backbone is not None or not resume or not (out / RUN_FILE).is_file():
        return backbone
    return json.loads((out / RUN_FILE).read_text())["backbone"]


def make_logger(out: Path, dist: Dist) -> Callable[[str], None]:
    """Rank 0's log: stderr and OUT/train.log."""

    def log(message: str) -> None:
        if dist.is_main:
            print(message, file=sys.stderr, flush=True)
            with (out / "train.log").open("a") as file:
                file.write(message + "\n")

    return log


def calibrate_random_vae(policy: VAMPolicy, dataset: Dataset,
                         log: Callable[[str], None]) -> None:
    """Give a random-weight (preset) VAE latent statistics of the dataset's own frames.

    A pretrained backbone keeps the statistics it ships with; this is its data-dependent
    stand-in (see `VideoBackbone.calibrate_latents`). Deterministic, so every DDP rank and a
    resumed run compute the same ones.
    """
    spec = SampleSpec.from_policy(policy.config, SampleConfig(), future=False)
    train = dataset.split("train")
    count = min(len(train), CALIBRATION_CLIPS // CALIBRATION_CLIPS_PER_EPISODE)
    clips = []
    for position in np.linspace(0, len(train) - 1, count).round().astype(np.int64):
        episode = dataset.load_episode(int(train[position]))
        anchors = np.linspace(0, len(episode.frame_times) - 1, CALIBRATION_CLIPS_PER_EPISODE)
        clips += [policy.frames(episode_clip(episode, int(a), spec)) for a in anchors.round()]
    batches = (torch.from_numpy(np.stack(clips[i:i + 8])).to(policy.device)
               for i in range(0, len(clips), 8))
    policy.backbone.calibrate_latents(batches)
    log(f"random-weight VAE: latent statistics measured on {len(clips)} history clips")


def open_latents(policy: VAMPolicy, dataset: Dataset, data: SampleConfig, *, use_cache: bool,
                 cache_dir: Path, dist: Dist, log: Callable[[str], None],
                 future: bool = True,
                 progress: bool = False) -> tuple[LatentSource, CacheReport | None]:
    """The latent cache (built or checked first), or live encoding with `use_cache=False`.

    `future=False`: history latents only, which makes the cache 2-3x faster to build.
    """
    spec = SampleSpec.from_policy(policy.config, data, future)
    if not use_cache:
        return LiveLatents(dataset, spec, policy), None
    report = prepare_cache(cache_dir, dataset, spec, policy, data.cache_dtype, data.encode_batch,
                           dist, log, progress)
    return LatentCache(cache_dir, dataset, policy.device), report


def run_info(stage: str, dataset: Dataset, config: PolicyConfig) -> dict[str, str]:
    """What run.json records (and --resume checks)."""
    return {"stage": stage, "dataset": str(dataset.root.resolve()),
            "backbone": config.backbone.source,
            "policy": json.dumps(config.to_dict(), sort_keys=True)}


@dataclass(frozen=True)
class TrainResult:
    """What a stage's entry function returns (on every rank; `final` on rank 0 only)."""

    out: Path
    step: int
    """Steps done when training stopped."""
    finished: bool
    """All configured steps are done and the product was exported."""
    final: Path | None
    """The policy checkpoint (stage 2) or backbone folder (stages 0 and 1)."""
    records: tuple[dict[str, float], ...]
    """Per-step and validation metrics (rank 0)."""
    cache: CacheReport | None
    train_samples: int
    """Training samples (anchors) the stage drew batches from."""


class StageConfig(Protocol):
    """What `open_stage` reads of a stage's training config."""

    @property
    def policy(self) -> PolicySpec: ...

    @property
    def optim(self) -> OptimConfig: ...

    @property
    def loop(self) -> LoopConfig: ...


_C = TypeVar("_C", bound=StageConfig)


@dataclass(frozen=True)
class StageSetup(Generic[_C]):
    """A started run: what every stage's entry function builds its stage from."""

    out: Path
    config: _C
    data: Dataset
    policy: VAMPolicy
    run: RunDir
    dist: Dist
    log: Callable[[str], None]
    resume: bool

    def latents(self, sampling: SampleConfig, *, use_cache: bool,
                cache_dir: str | Path | None, future: bool = True,
                progress: bool = False) -> tuple[LatentSource, CacheReport | None]:
        """`open_latents` into `cache_dir` (default OUT/latent_cache), a preset's random VAE
        calibrated first."""
        if is_preset(self.policy.config.backbone.source):
            calibrate_random_vae(self.policy, self.data, self.log)
        return open_latents(self.policy, self.data, sampling, use_cache=use_cache,
                            cache_dir=Path(cache_dir) if cache_dir else self.out / CACHE_DIR,
                            dist=self.dist, log=self.log, future=future, progress=progress)

    def train(self, stage: Stage, cache: CacheReport | None, *, stop_at: int | None,
              progress: bool) -> TrainResult:
        """Run `stage`'s training loop; `cache`: the latent cache it reads, if any."""
        result = run_stage(stage, self.run, self.config.loop, self.config.optim, self.dist,
                           resume=self.resume, stop_at=stop_at, progress=progress, log=self.log)
        return TrainResult(self.out, result.step, result.finished, result.final, result.records,
                           cache, stage.train_count)


@contextmanager
def open_stage(name: str, dataset: str | Path, out: str | Path, config: _C | None,
               cls: type[_C], *, backbone: str | None, steps: int | None, resume: bool,
               device: str) -> Iterator[StageSetup[_C]]:
    """Start stage `name`'s run in OUT; the process group closes on leaving.

    Resolves the config against OUT and `resume`, loads the dataset, records the run and
    builds the policy, the seed set first: a preset backbone gets the same random weights on
    every rank and on resume.
    """
    dist = init_distributed(device)
    try:
        out = Path(out)
        config = resolve_config(out, config, cls, steps, resume)
        data = load_dataset(dataset)
        policy_config = build_policy_config(config.policy, data,
                                            run_backbone(out, backbone, resume))
        run = start_run(out, config, run_info(name, data, policy_config), resume, dist)
        log = make_logger(out, dist)
        torch.manual_seed(config.loop.seed)
        policy = VAMPolicy.build(policy_config).to(dist.device)
        yield StageSetup(out, config, data, policy, run, dist, log, resume)
    finally:
        dist.close()
