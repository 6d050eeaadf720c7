"""Stage 0 (`vam train vae`): the backbone's VAE learns the robot's frames as an autoencoder.

Cosmos-Predict2 ships Wan 2.1's VAE, trained on web video; its latents already say where
things are. The tiny presets that run on a CPU have random weights instead, and a random VAE's
latents barely tell one frame from the next, so no decoder can find a cube in them. This stage
trains the VAE from scratch on the dataset's history clips: squared reconstruction error plus
a small KL term (Wan's VAE adds perceptual and GAN losses, which need pretrained networks).
Coloured pixels weigh more (`saturation_weight`): with a plain mean the small cubes that the
instructions name by colour came back as grey blobs. The stage then measures the latent
statistics (`VideoBackbone.calibrate_latents`) and writes a backbone folder in the
`save_pretrained` layout, its transformer untouched, for `vam train video` and
`vam train idm --backbone`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from vam_policy.data.dataset import Dataset
from vam_policy.model.backbone import VideoBackbone
from vam_policy.model.checkpoint import BACKBONE_DIR
from vam_policy.model.policy import VAMPolicy
from vam_policy.train.config import SampleConfig, VaeTrainConfig
from vam_policy.train.prepare import CALIBRATION_CLIPS, TrainResult, open_stage
from vam_policy.train.samples import SampleSpec, episode_clip


class _Autoencoder(nn.Module):
    """Reconstruction + KL loss of a clip batch through the VAE, as a forward for DDP."""

    def __init__(self, backbone: VideoBackbone, kl_weight: float,
                 saturation_weight: float) -> None:
        super().__init__()
        self.vae = backbone.vae
        self.kl_weight = kl_weight
        self.saturation_weight = saturation_weight

    def forward(self, clips: Tensor, eps: Tensor) -> Tensor:
        posterior = self.vae.encode(clips).latent_dist
        latents = posterior.mean + posterior.std * eps  # [B, 16, T', h, w]
        reconstruction = self.vae.decode(latents).sample  # [B, 3, T, H, W]
        kl = 0.5 * (posterior.mean.square() + posterior.var - 1.0 - posterior.logvar).mean()
        return (reconstruction_error(reconstruction, clips, self.saturation_weight)
                + self.kl_weight * kl)


def reconstruction_error(reconstruction: Tensor, target: Tensor,
                         saturation_weight: float) -> Tensor:
    """Squared error of `[B, 3, T, H, W]` frames in [-1, 1], a weighted mean over pixels: each
    weighs 1 + saturation_weight * its target's saturation (max - min over RGB: 0 for greys,
    up to 2 for a pure colour)."""
    target = target.float()
    saturation = target.amax(dim=1, keepdim=True) - target.amin(dim=1, keepdim=True)
    weight = 1.0 + saturation_weight * saturation  # [B, 1, T, H, W]
    error = (reconstruction.float() - target).square()  # [B, 3, T, H, W]
    return (weight * error).mean() / weight.mean()


def _clips(policy: VAMPolicy, dataset: Dataset, split: str, stride: int,
           progress: bool) -> Tensor:
    """History clips `[N, 3, T, H, W]` (float16, model-ready) starting every `stride` frames."""
    spec = SampleSpec.from_policy(policy.config, SampleConfig(), future=False)
    clips = []  # float16 per episode: a float32 stack of them all filled 24 GB on 2304 episodes
    for index in tqdm(dataset.split(split), desc=f"{split} clips", unit="episode",
                      dynamic_ncols=True, disable=not progress):
        episode = dataset.load_episode(int(index))
        clips.append(torch.from_numpy(np.stack([
            policy.frames(episode_clip(episode, anchor, spec))
            for anchor in range(0, len(episode.frame_times), stride)])).half())
    return torch.cat(clips) if clips else torch.empty(0)


class VaeStage:
    """The autoencoder step, validation and export for `run_stage`."""

    name = "vae"

    def __init__(self, policy: VAMPolicy, dataset: Dataset, config: VaeTrainConfig,
                 progress: bool = False) -> None:
        self.policy, self.config = policy, config
        policy.backbone.requires_grad_(False)
        policy.backbone.vae.requires_grad_(True)
        self.module = _Autoencoder(policy.backbone, config.kl_weight, config.saturation_weight)
        self.train_clips = _clips(policy, dataset, "train", config.clip_stride, progress)
        self.val_clips = _clips(policy, dataset, "val", config.clip_stride, progress)
        self.train_count = len(self.train_clips)
        if self.train_count == 0:
            raise ValueError("expected episodes in the dataset's train split, found none")

    def _loss(self, model: nn.Module, clips: Tensor, generator: torch.Generator) -> Tensor:
        device = self.policy.device
        clips = clips.to(device, torch.float32)
        bb = self.policy.config.backbone
        eps = torch.randn((len(clips), 16, bb.history_latent_frames, *bb.latent_size),
                          device=device, generator=generator)
        return model(clips, eps)

    def loss(self, model: nn.Module, positions: np.ndarray,
             generator: torch.Generator) -> Tensor:
        return self._loss(model, self.train_clips[torch.from_numpy(positions)], generator)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and reconstruction PSNR (dB, posterior mean) on evenly spread val clips."""
        if len(self.val_clips) == 0:
            return {}
        loop = self.config.loop
        count = min(len(self.val_clips), loop.eval_batches * loop.batch_size)
        rows = np.unique(np.linspace(0, len(self.val_clips) - 1, count).round().astype(np.int64))
        generator = torch.Generator(self.policy.device).manual_seed(loop.seed)
        vae = self.policy.backbone.vae
        loss_sum = mse_sum = 0.0
        for chunk in np.array_split(rows, math.ceil(len(rows) / loop.batch_size)):
            clips = self.val_clips[torch.from_numpy(chunk)]
            loss_sum += float(self._loss(self.module, clips, generator)) * len(chunk)
            clips = clips.to(self.policy.device, torch.float32)
            mean = vae.encode(clips).latent_dist.mode()
            mse_sum += float(F.mse_loss(vae.decode(mean).sample.float(), clips)) * len(chunk)
        mse = mse_sum / len(rows)
        # frames span [-1, 1]: peak-to-peak 2
        return {"val_loss": loss_sum / len(rows), "val_psnr_db": 10 * math.log10(4.0 / mse)}

    def save(self, folder: Path) -> None:
        """Nothing beyond the training state, which holds the VAE's weights."""

    def export(self, root: Path) -> Path:
        backbone = self.policy.backbone.eval()
        picks = np.linspace(0, self.train_count - 1, min(CALIBRATION_CLIPS, self.train_count))
        clips = self.train_clips[torch.from_numpy(picks.round().astype(np.int64))]
        backbone.calibrate_latents(clips[i:i + 8].to(self.policy.device, torch.float32)
                                   for i in range(0, len(clips), 8))
        folder = root / BACKBONE_DIR
        backbone.save_pretrained(folder)
        return folder


def train_vae(
    dataset: str | Path,
    out: str | Path,
    config: VaeTrainConfig | None = None,
    *,
    backbone: str | None = None,
    steps: int | None = None,
    resume: bool = False,
    device: str = "auto",
    stop_at: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the backbone's VAE on `dataset`'s frames; writes `out/backbone` at the end.

    `backbone`: the backbone whose VAE trains (default: the config's preset, random weights);
    the other arguments as `train_idm`'s.
    """
    with open_stage("vae", dataset, out, config, VaeTrainConfig, backbone=backbone,
                    steps=steps, resume=resume, device=device) as setup:
        config, policy_config = setup.config, setup.policy.config
        stage = VaeStage(setup.policy, setup.data, config, progress and setup.dist.is_main)
        setup.log(f"vae: {stage.train_count} train / {len(stage.val_clips)} val clips of "
                  f"{policy_config.history_frames} frames at {policy_config.backbone.height}x"
                  f"{policy_config.backbone.width}, {config.loop.steps} steps of "
                  f"{config.loop.batch_size} on {setup.dist.world} process(es)")
        return setup.train(stage, None, stop_at=stop_at, progress=progress)
