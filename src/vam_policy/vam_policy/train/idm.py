"""Stage 2 (`vam train idm`): the flow-matching action decoder on a frozen video backbone.

Each step reads cached history + future latents, draws tau_v (fixed 1.0 by default, the
paper's), runs the backbone's blocks 0..read_layer on clean history + ground-truth future
latents noised to tau_v (no grad), and trains the decoder's flow-matching loss on the
normalized, coded action chunk. Validation reports the flow loss on the val split and the
action error in joint units: chunks sampled as `VAMPolicy.predict` does, un-normalized and
decoded to absolute targets, against the truth. The product is a policy checkpoint the node
loads unchanged. When tau_v is 1 throughout (training and validation), the future latents
would be pure noise anyway, so the cache holds history latents only and the backbone draws
the noise itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from vam_policy.data.dataset import Dataset
from vam_policy.model.backbone_config import is_preset
from vam_policy.model.checkpoint import save_checkpoint
from vam_policy.model.decoder import ActionDecoder
from vam_policy.model.flow import sample_beta
from vam_policy.model.policy import VAMPolicy
from vam_policy.model.policy_config import PolicyConfig
from vam_policy.train.config import IdmTrainConfig, SampleConfig, TauVSampling
from vam_policy.train.latent_cache import LatentSource
from vam_policy.train.loop import validation_batches
from vam_policy.train.prepare import TrainResult, open_stage
from vam_policy.train.samples import fit_norm_stats

POLICY_DIR = "policy"


def sample_tau_v(config: TauVSampling, batch: int, device: torch.device,
                 generator: torch.Generator) -> Tensor:
    """One video flow time per example, `[B]`."""
    if config.kind == "fixed":
        return torch.full((batch,), config.value, device=device)
    if config.kind == "uniform":
        u = torch.rand(batch, device=device, generator=generator)
    else:
        u = sample_beta(config.alpha, config.beta, batch, device=device, generator=generator)
    return config.low + (config.high - config.low) * u


class _DecoderObjective(nn.Module):
    """The decoder's loss as a module's forward, so DDP can wrap it."""

    def __init__(self, decoder: ActionDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, features: Tensor, proprio: Tensor, actions: Tensor, tau_v: Tensor,
                text: Tensor, generator: torch.Generator) -> Tensor:
        return self.decoder.loss(features, proprio, actions, tau_v, generator=generator,
                                 text=text)


def oversample_start(rows: np.ndarray, anchor_s: np.ndarray, data: SampleConfig) -> np.ndarray:
    """`rows` with those anchored in the first `data.start_s` seconds repeated
    `data.start_repeat` times (each sample stays once per epoch otherwise)."""
    counts = np.where(anchor_s < data.start_s - 1e-9, data.start_repeat, 1)
    return np.repeat(rows, counts)


class IdmStage:
    """The decoder's training step, validation and checkpoints for `run_stage`."""

    name = "idm"

    def __init__(self, policy: VAMPolicy, source: LatentSource, dataset: Dataset,
                 config: IdmTrainConfig, embed_backbone: bool) -> None:
        self.policy, self.source, self.config = policy, source, config
        self.embed_backbone = embed_backbone
        self.module = _DecoderObjective(policy.decoder)
        table = source.table
        train_rows = table.rows(dataset.split("train"), with_actions=True)
        self.train_rows = oversample_start(train_rows, table.anchor[train_rows] / dataset.fps,
                                           config.data)
        self.val_rows = table.rows(dataset.split("val"), with_actions=True)
        self.train_count = len(self.train_rows)
        stats, device = policy.stats, policy.device
        coded = policy.actions.encode(table.targets, table.state)  # [S, H, J]
        self._proprio = torch.from_numpy(stats.state.normalize(table.state)).to(device)
        self._actions = torch.from_numpy(stats.action.normalize(coded)).to(device)

    @property
    def eval_tau_v(self) -> float:
        """The video flow time validation reads the plan at: the config's, else the policy's."""
        tau = self.config.eval_tau_v
        return self.policy.config.backbone.tau_v if tau is None else tau

    def inputs(self, rows: np.ndarray) -> tuple[Tensor, ...]:
        """History latents, future latents, text, normalized proprio and actions of `rows`."""
        latents = self.source.latents(rows)  # [B, 16, T_hist + T_fut, h, w]
        history_t = self.policy.config.backbone.history_latent_frames
        index = torch.from_numpy(rows).to(self.policy.device)
        future = latents[:, :, history_t:] if latents.shape[2] > history_t else None
        return (latents[:, :, :history_t], future, self.source.text(rows),
                self._proprio[index], self._actions[index])

    def predicted_targets(self, sampled: Tensor, rows: np.ndarray) -> np.ndarray:
        """Absolute joint targets `[B, H, J]` of the sampled (normalized, coded) chunks of
        `rows`, un-normalized and decoded as `VAMPolicy.predict` does."""
        coded = self.policy.stats.action.unnormalize(sampled.float().cpu().numpy())
        return self.policy.actions.decode(coded, self.source.table.state[rows])

    def loss(self, model: nn.Module, positions: np.ndarray,
             generator: torch.Generator) -> Tensor:
        history, future, text, proprio, actions = self.inputs(self.train_rows[positions])
        tau_v = sample_tau_v(self.config.tau_v, len(positions), self.policy.device, generator)
        with torch.no_grad():
            features = self.policy.backbone.features(history, text, tau_v, future, generator)
        return model(features, proprio, actions, tau_v, text, generator)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Flow loss and action errors (rad) on evenly spread val samples, fixed noise."""
        loop = self.config.loop
        batches = validation_batches(self.val_rows, loop.eval_batches * loop.batch_size,
                                     loop.batch_size)
        if not batches:
            return {}
        policy, table = self.policy, self.source.table
        generator = torch.Generator(policy.device).manual_seed(loop.seed)
        count = sum(len(chunk) for chunk in batches)
        loss_sum = error_sum = hold_sum = 0.0
        for chunk in batches:
            history, future, text, proprio, actions = self.inputs(chunk)
            tau_v = torch.full((len(chunk),), self.eval_tau_v, device=policy.device)
            features = policy.backbone.features(history, text, tau_v, future, generator)
            loss = policy.decoder.loss(features, proprio, actions, tau_v, generator=generator,
                                       text=text)
            loss_sum += float(loss) * len(chunk)
            sampled = policy.decoder.sample(features, proprio, tau_v,
                                            steps=self.config.eval_flow_steps,
                                            generator=generator, text=text)  # [b, H, J]
            truth = table.targets[chunk]
            error_sum += float(np.abs(self.predicted_targets(sampled, chunk) - truth).mean()
                               ) * len(chunk)
            hold_sum += float(np.abs(truth - table.state[chunk][:, None]).mean()) * len(chunk)
        return {"val_loss": loss_sum / count, "val_action_mae_rad": error_sum / count,
                "val_hold_still_mae_rad": hold_sum / count}

    def save(self, folder: Path) -> None:
        save_checkpoint(self.policy, folder / POLICY_DIR, self.embed_backbone)

    def export(self, root: Path) -> Path:
        return save_checkpoint(self.policy, root / POLICY_DIR, self.embed_backbone)


def needs_future(config: IdmTrainConfig, policy: PolicyConfig) -> bool:
    """Whether training ever sees the future latents: not when tau_v is always 1 (pure noise,
    the paper's default), in training and validation alike."""
    eval_tau = policy.backbone.tau_v if config.eval_tau_v is None else config.eval_tau_v
    always_noise = config.tau_v.kind == "fixed" and config.tau_v.value == 1.0
    return not (always_noise and eval_tau == 1.0)


def train_idm(
    dataset: str | Path,
    out: str | Path,
    config: IdmTrainConfig | None = None,
    *,
    backbone: str | None = None,
    steps: int | None = None,
    resume: bool = False,
    use_cache: bool = True,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    embed_backbone: bool | None = None,
    stop_at: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the action decoder of a policy on `dataset`; writes the run folder `out`.

    backbone: preset, hub id, backbone folder (`vam train video` output) or policy checkpoint,
        overriding the config's. steps: overrides `loop.steps`. resume: continue from
        `out`'s latest checkpoint (config may then be None). use_cache: False re-encodes every
        batch with the VAE. embed_backbone: copy the backbone into the checkpoints (default:
        only for random-weight presets, which have no folder to reference). stop_at: stop
        (with a checkpoint) after this step, as a run killed there would; resume continues.
    Under torchrun every process calls this; rank 0 writes.
    """
    with open_stage("idm", dataset, out, config, IdmTrainConfig, backbone=backbone,
                    steps=steps, resume=resume, device=device) as setup:
        config, data, policy = setup.config, setup.data, setup.policy
        policy.backbone.requires_grad_(False).eval()
        source, report = setup.latents(config.data, use_cache=use_cache, cache_dir=cache_dir,
                                       future=needs_future(config, policy.config),
                                       progress=progress)
        train_rows = source.table.rows(data.split("train"), with_actions=True)
        policy.stats = fit_norm_stats(data, source.table, train_rows, policy.actions)
        if embed_backbone is None:
            embed_backbone = is_preset(policy.config.backbone.source)
        stage = IdmStage(policy, source, data, config, embed_backbone)
        if data.fps != policy.config.fps:
            setup.log(f"note: dataset frames at {data.fps:g} fps are resampled to the policy's "
                      f"{policy.config.fps:g} fps")
        setup.log(f"idm: {stage.train_count} train / {len(stage.val_rows)} val samples, "
                  f"{config.loop.steps} steps of {config.loop.batch_size} on "
                  f"{setup.dist.world} process(es)")
        return setup.train(stage, report, stop_at=stop_at, progress=progress)
