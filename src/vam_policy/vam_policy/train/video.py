"""Stage 1 (`vam train video`): LoRA fine-tuning of the backbone on the robot's own videos.

The transformer keeps its flow-matching objective: clean history latents condition, future
latents are noised to a sampled flow time t (x_t = (1 - t) x0 + t eps), and the full
transformer (`VideoBackbone.denoise`, with the condition mask) regresses the velocity eps - x0
on the future frames only. Actions are never used, so action-free episodes train too. peft
LoRA adapters sit on the diffusers `CosmosTransformer3DModel` (rank, alpha and modules from
the config); the product is a backbone folder with the LoRA merged into the transformer, in
the `save_pretrained` layout, ready for `vam train idm --backbone`.

`objective: image` trains the same model on single frames instead (no conditioning frame, the
text alone): a static-image prior from the same frames, the baseline against which the
sample-efficiency experiment measures what video pretraining adds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig
from torch import Tensor, nn

from vam_policy.data.dataset import Dataset
from vam_policy.model.backbone import VideoBackbone
from vam_policy.model.flow import sample_time
from vam_policy.model.policy import VAMPolicy
from vam_policy.train.config import LoraSettings, VideoTrainConfig
from vam_policy.train.latent_cache import LatentSource
from vam_policy.train.loop import validation_batches
from vam_policy.train.prepare import TrainResult, open_stage

BACKBONE_DIR = "backbone"


def add_lora(backbone: VideoBackbone, settings: LoraSettings) -> int:
    """Freeze the backbone and put trainable LoRA adapters on the transformer; returns their
    parameter count."""
    backbone.requires_grad_(False)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha,
                        lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), init_lora_weights=True)
    try:
        backbone.transformer.add_adapter(config)
    except ValueError as error:
        raise ValueError(f"lora.target_modules {list(settings.target_modules)}: {error}"
                         ) from None
    return sum(p.numel() for p in backbone.parameters() if p.requires_grad)


def merge_lora(backbone: VideoBackbone) -> None:
    """Fold the adapters into the transformer's weights and drop them: a plain diffusers
    model again, which `from_pretrained` loads without peft."""
    backbone.transformer.fuse_lora()
    backbone.transformer.unload_lora()


class _VideoObjective(nn.Module):
    """The transformer's flow-matching loss on the future frames, as a forward for DDP."""

    def __init__(self, backbone: VideoBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    def train(self, mode: bool = True) -> _VideoObjective:
        """Train mode for the transformer's adapters; the frozen VAE stays in eval mode."""
        super().train(mode)
        self.backbone.vae.eval()
        return self

    def forward(self, history: Tensor, future: Tensor, text: Tensor, tau: Tensor,
                eps: Tensor) -> Tensor:
        backbone = self.backbone
        # Timesteps and condition mask exactly as features() and the pipeline build them; its
        # noisy latents are rebuilt here because the target needs the noise that made them.
        inputs = backbone.prepare_inputs(history, tau, future)
        t = tau.view(-1, 1, 1, 1, 1)
        noisy = (1.0 - t) * future + t * eps  # [B, 16, T_fut, h, w]
        video = torch.cat([history, noisy], dim=2).to(inputs.latent_video.dtype)
        velocity = backbone.denoise(video, inputs.timestep, text, inputs.condition_mask)
        history_t = history.shape[2]
        return F.mse_loss(velocity[:, :, history_t:].float(), (eps - future).float())


class _ImageObjective(_VideoObjective):
    """The same transformer's flow-matching loss on single frames with no conditioning frame:
    a text-to-image prior, the static counterpart of `_VideoObjective`."""

    def forward(self, image: Tensor, text: Tensor, tau: Tensor, eps: Tensor) -> Tensor:
        batch, _, frames, height, width = image.shape  # frames = 1
        t = tau.view(batch, 1, 1, 1, 1)
        noisy = (1.0 - t) * image + t * eps  # [B, 16, 1, h, w]
        dtype = self.backbone.transformer.dtype
        velocity = self.backbone.denoise(
            noisy.to(dtype), t.expand(batch, 1, frames, 1, 1).to(dtype), text,
            image.new_zeros(batch, 1, frames, height, width, dtype=dtype))
        return F.mse_loss(velocity.float(), (eps - image).float())


class VideoStage:
    """The LoRA training step, validation and export for `run_stage`."""

    name = "video"

    def __init__(self, policy: VAMPolicy, source: LatentSource, dataset: Dataset,
                 config: VideoTrainConfig) -> None:
        self.policy, self.source, self.config = policy, source, config
        objective = _ImageObjective if config.objective == "image" else _VideoObjective
        self.module = objective(policy.backbone)
        self.train_rows = source.table.rows(dataset.split("train"), with_actions=False)
        self.val_rows = source.table.rows(dataset.split("val"), with_actions=False)
        self.train_count = len(self.train_rows)
        if self.train_count == 0:
            raise ValueError("expected episodes in the dataset's train split, found none")

    def _loss(self, model: nn.Module, rows: np.ndarray, generator: torch.Generator) -> Tensor:
        latents = self.source.latents(rows)  # [B, 16, T_hist + T_fut, h, w]
        history_t = self.policy.config.backbone.history_latent_frames
        device = self.policy.device
        tau = sample_time(self.config.time_sampling, len(rows), device=device,
                          generator=generator)
        if self.config.objective == "image":
            # The first latent of a causal clip is its oldest frame encoded on its own.
            image = latents[:, :, :1]
            eps = torch.randn(image.shape, device=device, generator=generator)
            return model(image, self.source.text(rows), tau, eps)
        history, future = latents[:, :, :history_t], latents[:, :, history_t:]
        eps = torch.randn(future.shape, device=device, generator=generator)
        return model(history, future, self.source.text(rows), tau, eps)

    def loss(self, model: nn.Module, positions: np.ndarray,
             generator: torch.Generator) -> Tensor:
        return self._loss(model, self.train_rows[positions], generator)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Flow loss on evenly spread val samples, with fixed flow times and noise."""
        loop = self.config.loop
        batches = validation_batches(self.val_rows, loop.eval_batches * loop.batch_size,
                                     loop.batch_size)
        if not batches:
            return {}
        generator = torch.Generator(self.policy.device).manual_seed(loop.seed)
        total = sum(float(self._loss(self.module, chunk, generator)) * len(chunk)
                    for chunk in batches)
        return {"val_loss": total / sum(len(chunk) for chunk in batches)}

    def save(self, folder: Path) -> None:
        """Nothing beyond the training state, which holds the adapters."""

    def export(self, root: Path) -> Path:
        merge_lora(self.policy.backbone)
        folder = root / BACKBONE_DIR
        self.policy.backbone.save_pretrained(folder)
        return folder


def train_video(
    dataset: str | Path,
    out: str | Path,
    config: VideoTrainConfig | None = None,
    *,
    backbone: str | None = None,
    steps: int | None = None,
    resume: bool = False,
    use_cache: bool = True,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    stop_at: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """LoRA-fine-tune the backbone on `dataset`'s videos; writes `out/backbone` at the end.

    Arguments as `train_idm`'s. Resuming with `steps` equal to the checkpoint's step only
    exports that checkpoint's merged backbone.
    """
    with open_stage("video", dataset, out, config, VideoTrainConfig, backbone=backbone,
                    steps=steps, resume=resume, device=device) as setup:
        config = setup.config
        source, report = setup.latents(config.data, use_cache=use_cache, cache_dir=cache_dir,
                                       progress=progress)
        trainable = add_lora(setup.policy.backbone, config.lora)
        stage = VideoStage(setup.policy, source, setup.data, config)
        setup.log(f"video: LoRA rank {config.lora.rank} ({trainable} parameters), "
                  f"{stage.train_count} train / {len(stage.val_rows)} val clips, "
                  f"{config.loop.steps} steps of {config.loop.batch_size} on "
                  f"{setup.dist.world} process(es)")
        return setup.train(stage, report, stop_at=stop_at, progress=progress)
