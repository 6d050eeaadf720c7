"""Stage 1 on the tiny preset: LoRA trains on videos alone, merges into a backbone folder that
loads as a plain diffusers model and feeds stage 2; resume is exact."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bagtools import small_video_dataset
from safetensors.torch import load_file

from conftest import REPO_ROOT
from vam_policy.data.dataset import load_dataset
from vam_policy.model.backbone import VideoBackbone
from vam_policy.model.backbone_config import get_backbone_config
from vam_policy.model.checkpoint import load_checkpoint
from vam_policy.train.config import (
    ConfigError,
    IdmTrainConfig,
    VideoTrainConfig,
    load_train_config,
)
from vam_policy.train.idm import train_idm
from vam_policy.train.video import train_video

torch.set_num_threads(1)
TINY = load_train_config("video:tiny", VideoTrainConfig)
CONFIG = dataclasses.replace(TINY, loop=dataclasses.replace(TINY.loop, steps=6, eval_every=3,
                                                            save_every=3))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three demos; the first train episode has no actions (all NaN), as a video-only one."""
    dataset = load_dataset(small_video_dataset(tmp_path_factory.mktemp("video"),
                                               REPO_ROOT / "config" / "ur5e.yaml"))
    path = dataset.root / dataset.episodes[dataset.split("train")[0]].file
    with np.load(path) as data:
        arrays = dict(data)
    arrays["action"][:] = np.nan
    with path.open("wb") as file:
        np.savez(file, **arrays)
    return dataset.root


@pytest.fixture(scope="module")
def trained(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return train_video(dataset_dir, tmp_path_factory.mktemp("run") / "video", CONFIG,
                       progress=False)


def test_lora_trains_on_every_train_video_even_without_actions(trained, dataset_dir) -> None:
    """Stage 1 never reads actions: the NaN-action episode's anchors count as samples."""
    dataset = load_dataset(dataset_dir)
    anchors = sum(dataset.episodes[i].frames for i in dataset.split("train"))
    assert trained.train_samples == anchors
    losses = [r["loss"] for r in trained.records if "loss" in r]
    assert len(losses) == 6 and np.all(np.isfinite(losses))
    assert [r["step"] for r in trained.records if "val_loss" in r] == [3, 6]


def test_merged_backbone_is_base_plus_the_trained_lora(trained) -> None:
    """The exported folder loads with VideoBackbone.build; a LoRA target weight equals the
    base weight + (alpha / r) B A from the training state, with B moved away from its zero
    init; an untargeted weight is unchanged."""
    state = torch.load(trained.out / "checkpoints" / "step_0000006" / "training_state.pt",
                       weights_only=True)["trainable"]
    name = "transformer_blocks.1.attn1.to_q"
    a = state[f"backbone.transformer.{name}.lora_A.default.weight"]
    b = state[f"backbone.transformer.{name}.lora_B.default.weight"]
    assert b.abs().max() > 0
    torch.manual_seed(CONFIG.loop.seed)
    base = VideoBackbone.build(get_backbone_config("tiny")).transformer.state_dict()
    config = get_backbone_config("tiny", source=str(trained.final))
    merged = VideoBackbone.build(config).transformer.state_dict()
    scale = CONFIG.lora.alpha / CONFIG.lora.rank
    torch.testing.assert_close(merged[f"{name}.weight"], base[f"{name}.weight"] + scale * b @ a)
    norm = "transformer_blocks.1.norm1.linear_1.weight"
    assert torch.equal(merged[norm], base[norm])
    assert not any("lora" in key for key in merged)


def test_stage_two_trains_on_the_stage_one_backbone(trained, dataset_dir, tmp_path) -> None:
    """`--backbone` takes the stage-1 folder (and --resume remembers it); the decoder skips
    the action-free episode; its checkpoint references the backbone folder and loads."""
    idm = load_train_config("idm:tiny", IdmTrainConfig)
    idm = dataclasses.replace(idm, loop=dataclasses.replace(idm.loop, steps=2, eval_every=2,
                                                            save_every=2))
    cache = trained.out / "latent_cache"
    train_idm(dataset_dir, tmp_path / "idm", idm, backbone=str(trained.final), cache_dir=cache,
              stop_at=1, progress=False)
    result = train_idm(dataset_dir, tmp_path / "idm", None, cache_dir=cache, resume=True,
                       progress=False)
    assert result.train_samples < trained.train_samples and result.cache.built == 0
    manifest = json.loads((result.final / "vam_policy.json").read_text())
    assert manifest["backbone"] == str(trained.final.resolve())
    assert load_checkpoint(result.final).config.backbone.source == str(trained.final.resolve())


def test_resume_reaches_the_same_backbone(trained, dataset_dir, tmp_path) -> None:
    """Stopped at step 3 and resumed, the merged backbone equals the uninterrupted run's."""
    cache = trained.out / "latent_cache"
    part = train_video(dataset_dir, tmp_path / "v", CONFIG, cache_dir=cache, stop_at=3,
                       progress=False)
    assert (part.step, part.final) == (3, None)
    rest = train_video(dataset_dir, tmp_path / "v", None, cache_dir=cache, resume=True,
                       progress=False)
    assert rest.step == 6
    files = [r.final / "transformer" / "diffusion_pytorch_model.safetensors"
             for r in (trained, rest)]
    a, b = (load_file(f) for f in files)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_image_objective_trains_the_same_model_on_single_frames(trained, dataset_dir,
                                                                 tmp_path) -> None:
    """The static baseline: same samples and LoRA, a different transformer at the end, and a
    lower loss than its first steps' (single frames from text are learnable)."""
    image = dataclasses.replace(CONFIG, objective="image",
                                loop=dataclasses.replace(CONFIG.loop, steps=30, eval_every=30,
                                                         save_every=30))
    result = train_video(dataset_dir, tmp_path / "image", image,
                         cache_dir=trained.out / "latent_cache", progress=False)
    assert result.finished and result.train_samples == trained.train_samples
    losses = np.array([r["loss"] for r in result.records if "loss" in r])
    assert losses[-5:].mean() < losses[:5].mean()
    files = [r.final / "transformer" / "diffusion_pytorch_model.safetensors"
             for r in (trained, result)]
    a, b = (load_file(f) for f in files)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="Did you mean 'image'"):
        dataclasses.replace(CONFIG, objective="imag")


def test_lora_settings_are_checked(tmp_path: Path) -> None:
    """A typo in the lora section names the right key; the paper preset keeps rank 256."""
    mine = tmp_path / "lora.yaml"
    mine.write_text("extends: video:tiny\nlora: {rnak: 4}\n")
    with pytest.raises(ConfigError, match="Did you mean 'rank'"):
        load_train_config(mine, VideoTrainConfig)
    paper = load_train_config("video:paper", VideoTrainConfig)
    assert (paper.lora.rank, paper.lora.alpha, paper.optim.lr) == (256, 32.0, 1.8e-4)
