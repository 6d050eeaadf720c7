"""Stage 2 on the tiny preset: the decoder learns, its checkpoint serves, runs resume exactly,
the latent cache is reused, checked and rebuilt, and configs fail helpfully."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from bagtools import INSTRUCTION_TOPIC, DemoSpec, write_demo_bag
from safetensors.torch import load_file

from conftest import REPO_ROOT
from vam_policy.cli import main
from vam_policy.data.dataset import build_dataset, load_dataset
from vam_policy.data.episodes import RecordingProfile
from vam_policy.model.checkpoint import load_checkpoint
from vam_policy.model.transforms import Normalizer
from vam_policy.train.config import (
    ConfigError,
    IdmTrainConfig,
    TauVSampling,
    load_train_config,
    preset_names,
)
from vam_policy.train.idm import train_idm
from vam_policy.train.loop import TrainError
from vam_policy.train.samples import SampleSpec, build_table, clip_indices, coded_actions

torch.set_num_threads(1)
TINY = load_train_config("idm:tiny", IdmTrainConfig)


def _config(steps: int, every: int) -> IdmTrainConfig:
    loop = dataclasses.replace(TINY.loop, steps=steps, eval_every=every, save_every=every)
    return dataclasses.replace(TINY, loop=loop)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 2 s UR5e demos (two instructions), one held out for validation."""
    root = tmp_path_factory.mktemp("idm")
    bags = []
    for i in range(3):
        spec = DemoSpec(duration_s=2.0, motion_offset=0.1 * i, seed=i,
                        instruction_topic=INSTRUCTION_TOPIC,
                        instruction=("pick up the red cube", "push the cube")[i % 2])
        bags.append(write_demo_bag(root / f"bag{i}", spec).path)
    profile = RecordingProfile.load(REPO_ROOT / "config" / "ur5e.yaml")
    build_dataset(bags, profile, root / "dataset", val_fraction=0.34, progress=False)
    return root / "dataset"


@pytest.fixture(scope="module")
def trained(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run") / "idm"
    return train_idm(dataset_dir, out, _config(steps=80, every=40), progress=False)


def test_loss_goes_down(trained) -> None:
    """Flow loss, smoothed over 15 steps, falls clearly from the start to the end."""
    losses = np.array([r["loss"] for r in trained.records if "loss" in r])
    assert len(losses) == 80 and np.all(np.isfinite(losses))
    assert losses[-15:].mean() < 0.75 * losses[:15].mean()


def test_run_folder_holds_metrics_plot_and_checkpoints(trained) -> None:
    """Step checkpoints every 40 steps, validation (flow loss, action error in rad) with them,
    a loss plot, and the final policy under OUT/policy."""
    out = trained.out
    assert trained.finished and trained.step == 80 and trained.final == (out / "policy")
    assert (out / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest", "step_0000040", "step_0000080"]
    scores = [r for r in trained.records if "val_action_mae_rad" in r]
    assert [r["step"] for r in scores] == [40, 80]
    assert all(np.isfinite(r["val_action_mae_rad"]) and r["val_loss"] > 0 for r in scores)


def test_checkpoint_serves_like_the_node_loads_it(trained, dataset_dir: Path) -> None:
    """The final policy loads with load_checkpoint and predicts finite [H, J] targets from a
    dataset clip; its action statistics are those of the coded train chunks."""
    policy = load_checkpoint(trained.final)
    dataset = load_dataset(dataset_dir)
    episode = dataset.load_episode(dataset.split("val")[0])
    spec = SampleSpec.from_policy(policy.config, TINY.data)
    frames = episode.frames[0][clip_indices(10, len(episode.frame_times), episode.fps,
                                            spec)[:spec.history_frames]]
    targets = policy.predict(frames, episode.state[10], episode.instruction, seed=0)
    assert targets.shape == (policy.config.horizon, len(dataset.joint_names))
    assert np.all(np.isfinite(targets))
    table = build_table(dataset, spec)
    train = table.rows(dataset.split("train"), with_actions=True)
    fitted = Normalizer.fit(coded_actions(table, train, policy.actions))
    np.testing.assert_allclose(policy.stats.action.std, fitted.std, rtol=1e-5)


def test_resumed_run_equals_uninterrupted_run(trained, dataset_dir: Path, tmp_path: Path) -> None:
    """Stopped at step 6 and resumed in a new call, a run ends at step 12 with the same decoder
    weights, bit for bit, as an uninterrupted 12-step run."""
    config, cache = _config(steps=12, every=6), trained.out / "latent_cache"
    whole = train_idm(dataset_dir, tmp_path / "whole", config, cache_dir=cache, progress=False)
    part = train_idm(dataset_dir, tmp_path / "split", config, cache_dir=cache, stop_at=6,
                     progress=False)
    assert (part.step, part.finished, part.final) == (6, False, None)
    rest = train_idm(dataset_dir, tmp_path / "split", None, cache_dir=cache, resume=True,
                     progress=False)
    assert (rest.step, rest.finished) == (12, True)
    a, b = (load_file(r.final / "decoder.safetensors") for r in (whole, rest))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r for r in whole.records if "val_loss" in r] == [
        r for r in rest.records if "val_loss" in r]


def test_run_folder_rules(trained, dataset_dir: Path, tmp_path: Path) -> None:
    """A new run refuses a folder with checkpoints; --resume needs one and the same config."""
    with pytest.raises(TrainError, match="--resume"):
        train_idm(dataset_dir, trained.out, TINY, progress=False)
    with pytest.raises(TrainError, match="nothing to resume"):
        train_idm(dataset_dir, tmp_path / "empty", TINY, resume=True, progress=False)
    other = dataclasses.replace(TINY, optim=dataclasses.replace(TINY.optim, lr=0.5))
    with pytest.raises(TrainError, match=r"optim\.lr"):
        train_idm(dataset_dir, trained.out, other, resume=True, progress=False)


def test_cache_is_reused_checked_and_rebuilt(trained, dataset_dir: Path, tmp_path: Path) -> None:
    """A second run encodes nothing; a truncated file is reported and re-encoded; touching the
    dataset invalidates every file; latents from the cache train as the live VAE's do."""
    cache = tmp_path / "cache"
    config = _config(steps=2, every=2)
    first = train_idm(dataset_dir, tmp_path / "a", config, cache_dir=cache, progress=False)
    assert (first.cache.built, first.cache.reused) == (3, 0)
    second = train_idm(dataset_dir, tmp_path / "b", config, cache_dir=cache, progress=False)
    assert (second.cache.built, second.cache.reused, second.cache.corrupt) == (0, 3, 0)

    victim = cache / "episode_000001.safetensors"
    victim.write_bytes(victim.read_bytes()[:200])
    third = train_idm(dataset_dir, tmp_path / "c", config, cache_dir=cache, progress=False)
    assert (third.cache.built, third.cache.corrupt) == (1, 1)
    assert "is corrupt" in (tmp_path / "c" / "train.log").read_text()

    episode_file = dataset_dir / "episodes" / "000000.npz"
    os.utime(episode_file, ns=(episode_file.stat().st_atime_ns, 1_000_000_000))
    fourth = train_idm(dataset_dir, tmp_path / "d", config, cache_dir=cache, progress=False)
    assert (fourth.cache.built, fourth.cache.changed) == (3, ("dataset",))

    live = train_idm(dataset_dir, tmp_path / "e", config, use_cache=False, progress=False)
    assert live.cache is None
    np.testing.assert_allclose([r["loss"] for r in live.records if "loss" in r],
                               [r["loss"] for r in fourth.records if "loss" in r], rtol=1e-4)


def test_cache_keeps_future_latents_only_when_tau_v_goes_below_one(
        trained, dataset_dir: Path, tmp_path: Path) -> None:
    """At tau_v = 1 the future latents are replaced by noise, so the cache skips them; a decoder
    trained on tau_v in [0, 1] needs the true future and gets it."""
    name = "episode_000000.safetensors"
    backbone = load_checkpoint(trained.final).config.backbone
    noise_only = load_file(trained.out / "latent_cache" / name)["latents"]
    assert noise_only.shape[2] == backbone.history_latent_frames
    config = dataclasses.replace(_config(steps=2, every=2), tau_v=TauVSampling(kind="uniform"))
    any_tau = train_idm(dataset_dir, tmp_path / "any", config, progress=False)
    assert any_tau.finished
    with_future = load_file(tmp_path / "any" / "latent_cache" / name)["latents"]
    assert with_future.shape[2] == backbone.latent_frames
    torch.testing.assert_close(with_future[:, :, :backbone.history_latent_frames], noise_only)


def test_decoder_steps_benchmark_reads_validation_as_training_does(trained,
                                                                  dataset_dir: Path) -> None:
    """benchmarks/bench_decoder_steps.py runs on the stage-2 API it reuses: on validation's own
    rows its holding-still error is validation's, 10 steps is its reference, and each step
    count has a finite error and time."""
    spec = importlib.util.spec_from_file_location(
        "bench_decoder_steps", REPO_ROOT / "benchmarks" / "bench_decoder_steps.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(checkpoint=trained.final, dataset=dataset_dir, cache_dir=None,
                              config="idm:tiny", samples=TINY.loop.eval_batches
                              * TINY.loop.batch_size, repeats=1, device="cpu", decoder=0)
    result = bench.run(args)
    assert result["hold_still_mae_rad"] == pytest.approx(
        result["training_validation"]["val_hold_still_mae_rad"], rel=1e-6)
    rows = {row["steps"]: row for row in result["rows"]}
    assert sorted(rows) == [1, 2, 3, 5, 10]
    assert rows[10]["mae_change_vs_10_rad"] == rows[10]["target_shift_vs_10_rad"] == 0.0
    assert rows[10]["time_vs_10_steps"] == 1.0
    assert all(np.isfinite(r["action_mae_rad"]) and r["median_ms_per_chunk"] > 0
               for r in rows.values())


def test_presets_by_name_typos_and_yaml_files(tmp_path: Path) -> None:
    """Presets by name (the default is the paper's), did-you-mean errors for preset names and
    keys, type errors naming the field, and a user YAML extending a preset."""
    assert {"paper", "tiny"} <= set(preset_names("idm"))
    paper = load_train_config("idm", IdmTrainConfig)
    assert (paper.optim.lr, paper.optim.weight_decay, paper.optim.grad_clip) == (1e-4, 0.1, 10)
    assert paper.tau_v.kind == "fixed" and paper.tau_v.value == 1.0
    with pytest.raises(ConfigError, match="Did you mean idm:tiny"):
        load_train_config("idm:tinyy", IdmTrainConfig)
    with pytest.raises(ConfigError, match="expected a 'idm' preset"):
        load_train_config("video:tiny", IdmTrainConfig)
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: idm:tiny\nlopo: {steps: 3}\n")
    with pytest.raises(ConfigError, match="Did you mean 'loop'"):
        load_train_config(bad, IdmTrainConfig)
    bad.write_text("optim: {lr: fast}\n")
    with pytest.raises(ConfigError, match=r"optim\.lr: expected float"):
        load_train_config(bad, IdmTrainConfig)
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: idm:tiny\nloop: {steps: 3}\ntau_v: {kind: uniform, low: 0.2}\n")
    config = load_train_config(mine, IdmTrainConfig)
    assert config.loop.steps == 3 and config.loop.batch_size == TINY.loop.batch_size
    assert (config.tau_v.kind, config.tau_v.low, config.policy.preset) == ("uniform", 0.2, "tiny")


def test_cli_trains_from_a_yaml_file(dataset_dir: Path, tmp_path: Path, capsys) -> None:
    """`vam train idm --config FILE.yaml` runs; a bad dataset is one error line, exit 1."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: idm:tiny\nloop: {steps: 2, eval_every: 2, save_every: 2}\n"
                    "tau_v: {kind: beta, alpha: 2.0, beta: 1.0}\n")
    out = tmp_path / "cli"
    args = ["train", "idm", "--dataset", str(dataset_dir), "--config", str(mine), "--out",
            str(out), "--no-progress"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().endswith(str(out / "policy"))
    assert load_train_config(out / "train_config.yaml", IdmTrainConfig).tau_v.kind == "beta"
    assert main(["train", "idm", "--dataset", str(tmp_path), "--config", "idm:tiny", "--out",
                 str(tmp_path / "x")]) == 1
    assert "error:" in capsys.readouterr().err
