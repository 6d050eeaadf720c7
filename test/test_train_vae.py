"""Stage 0 on the tiny preset: the VAE learns the dataset's frames, its backbone folder carries
latent statistics of those frames and feeds stage 2; resume is exact."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from bagtools import small_video_dataset
from safetensors.torch import load_file

from conftest import REPO_ROOT
from vam_policy.cli import main
from vam_policy.data.dataset import load_dataset
from vam_policy.model.backbone import SIGMA_DATA, VideoBackbone
from vam_policy.model.backbone_config import get_backbone_config
from vam_policy.model.checkpoint import load_checkpoint
from vam_policy.model.policy import VAMPolicy
from vam_policy.model.policy_config import policy_preset
from vam_policy.train.config import IdmTrainConfig, VaeTrainConfig, load_train_config
from vam_policy.train.idm import train_idm
from vam_policy.train.latent_cache import module_fingerprint
from vam_policy.train.vae import VaeStage, reconstruction_error, train_vae

torch.set_num_threads(1)
TINY = load_train_config("vae:tiny", VaeTrainConfig)


def _config(steps: int, every: int) -> VaeTrainConfig:
    loop = dataclasses.replace(TINY.loop, steps=steps, eval_every=every, save_every=every)
    return dataclasses.replace(TINY, loop=loop)


def test_coloured_pixels_weigh_more_in_the_reconstruction_error() -> None:
    """The same error on a saturated red pixel costs more than on a grey one, by the weight;
    saturation_weight 0 is the plain mean squared error."""
    target = torch.zeros(1, 3, 1, 1, 2)
    target[0, :, 0, 0, 1] = torch.tensor([1.0, -1.0, -1.0])  # pixel 1: pure red
    grey_miss, red_miss = target.clone(), target.clone()
    grey_miss[0, :, 0, 0, 0] += 0.5
    red_miss[0, :, 0, 0, 1] -= 0.5
    grey, red = (reconstruction_error(r, target, 10.0) for r in (grey_miss, red_miss))
    assert red / grey == pytest.approx(21.0)  # weights 1 + 10 * 2 against 1
    assert reconstruction_error(red_miss, target, 0.0) == pytest.approx(0.75 / 6)


def test_cache_fingerprint_follows_latent_statistics_not_the_load_path(tmp_path: Path) -> None:
    """Calibrated statistics change every cached latent; the folder a VAE came from does not."""
    torch.manual_seed(0)
    backbone = VideoBackbone.build(get_backbone_config("tiny"))
    before = module_fingerprint(backbone.vae)
    loaded = VideoBackbone.build(backbone.save_pretrained(tmp_path / "copy"))
    assert module_fingerprint(loaded.vae) == before
    backbone.vae.register_to_config(latents_std=[2.0] * 16)
    assert module_fingerprint(backbone.vae) != before


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_video_dataset(tmp_path_factory.mktemp("vae"),
                               REPO_ROOT / "config" / "ur5e.yaml")


@pytest.fixture(scope="module")
def trained(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return train_vae(dataset_dir, tmp_path_factory.mktemp("run") / "vae", _config(40, 20),
                     progress=False)


def test_reconstruction_improves(trained) -> None:
    """The loss falls and validation PSNR rises between the two evaluations."""
    losses = np.array([r["loss"] for r in trained.records if "loss" in r])
    assert len(losses) == 40 and np.all(np.isfinite(losses))
    assert losses[-10:].mean() < 0.5 * losses[:10].mean()
    psnr = [r["val_psnr_db"] for r in trained.records if "val_psnr_db" in r]
    assert len(psnr) == 2 and psnr[1] > psnr[0]


def test_backbone_folder_has_the_trained_vae_and_its_latent_statistics(
        trained, dataset_dir: Path) -> None:
    """The folder loads with VideoBackbone.build; its VAE is the trained one, its transformer
    the untouched random preset, and the training clips' latents come out normalized."""
    config = dataclasses.replace(get_backbone_config("tiny"), source=str(trained.final))
    backbone = VideoBackbone.build(config)
    state = torch.load(trained.out / "checkpoints" / "step_0000040" / "training_state.pt",
                       weights_only=True)["trainable"]
    name = "encoder.conv_in.weight"
    torch.testing.assert_close(backbone.vae.state_dict()[name], state[f"vae.{name}"])
    torch.manual_seed(TINY.loop.seed)
    fresh = VideoBackbone.build(get_backbone_config("tiny"))
    assert all(torch.equal(a, b) for a, b in zip(fresh.transformer.state_dict().values(),
                                                 backbone.transformer.state_dict().values(),
                                                 strict=True))
    policy = VAMPolicy.build(dataclasses.replace(
        policy_preset("tiny", joint_names=[f"j{i}" for i in range(6)]), backbone=config))
    clips = VaeStage(policy, load_dataset(dataset_dir), TINY).train_clips.float()
    latents = backbone.encode_video(clips)  # [N, 16, T', h, w]
    per_channel = latents.transpose(0, 1).flatten(1)
    assert per_channel.mean(1).abs().max() < 0.05
    torch.testing.assert_close(per_channel.std(1).mean(), torch.tensor(SIGMA_DATA), atol=0.1,
                               rtol=0)


def test_stage_two_trains_on_the_vae_backbone(trained, dataset_dir: Path,
                                              tmp_path: Path) -> None:
    idm = load_train_config("idm:tiny", IdmTrainConfig)
    idm = dataclasses.replace(idm, loop=dataclasses.replace(idm.loop, steps=2, eval_every=2,
                                                            save_every=2))
    result = train_idm(dataset_dir, tmp_path / "idm", idm, backbone=str(trained.final),
                       progress=False)
    policy = load_checkpoint(result.final)
    assert policy.config.backbone.source == str(trained.final.resolve())
    assert "random-weight VAE" not in (tmp_path / "idm" / "train.log").read_text()


def test_resumed_run_equals_uninterrupted_run(dataset_dir: Path, tmp_path: Path) -> None:
    config = _config(4, 2)
    whole = train_vae(dataset_dir, tmp_path / "whole", config, progress=False)
    part = train_vae(dataset_dir, tmp_path / "split", config, stop_at=2, progress=False)
    assert (part.step, part.final) == (2, None)
    rest = train_vae(dataset_dir, tmp_path / "split", None, resume=True, progress=False)
    a, b = (load_file(r.final / "vae" / "diffusion_pytorch_model.safetensors")
            for r in (whole, rest))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_prints_the_backbone_folder(dataset_dir: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", "vae", "--dataset", str(dataset_dir), "--config", "vae:tiny",
                 "--out", str(tmp_path / "cli"), "--steps", "1", "--no-progress"])
    assert code == 0
    assert capsys.readouterr().out.strip().endswith("backbone")
