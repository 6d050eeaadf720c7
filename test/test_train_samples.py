"""Episodes to training samples: clip frames around an anchor, padding, chunk alignment,
relative coding and the action statistics it needs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from bagtools import INSTRUCTION_TOPIC, DemoSpec, write_demo_bag

from conftest import REPO_ROOT
from vam_policy.data.dataset import build_dataset
from vam_policy.data.episodes import Episode, RecordingProfile
from vam_policy.model.backbone_config import COSMOS_PREDICT2_2B_HUB_ID
from vam_policy.model.transforms import ActionCoding, Normalizer
from vam_policy.train.config import ConfigError, PolicySpec, SampleConfig, VideoTrainConfig
from vam_policy.train.idm import oversample_start
from vam_policy.train.prepare import build_policy_config
from vam_policy.train.samples import (
    SampleSpec,
    anchor_frames,
    anchor_targets,
    build_table,
    clip_indices,
    coded_actions,
    episode_clip,
    fit_norm_stats,
)

SPEC = SampleSpec(history_frames=5, future_frames=8, fps=10.0, horizon=4, action_dt=0.1)
JOINTS = ("a", "b")


def _episode(frames: int = 20, fps: float = 10.0, rate: float = 10.0,
             cameras: int = 2) -> Episode:
    """Frames whose pixels are (camera, frame index); state t, action 10 t + joint."""
    control_times = np.arange(round(frames / fps * rate)) / rate
    pixels = [np.zeros((frames, 4, 6, 3), np.uint8) for _ in range(cameras)]
    for c, clip in enumerate(pixels):
        clip[..., 0] = np.arange(frames)[:, None, None]
        clip[..., 1] = c
    return Episode(
        source="synthetic", instruction="move", instruction_source="flag",
        action_source="commands", joint_names=JOINTS,
        camera_topics=tuple(f"/cam{c}" for c in range(cameras)), fps=fps,
        control_rate_hz=rate, start_ns=0, frame_times=np.arange(frames) / fps,
        frames=tuple(pixels), control_times=control_times,
        state=np.stack([control_times, -control_times], 1).astype(np.float32),
        action=np.stack([10 * control_times, 10 * control_times + 1], 1).astype(np.float32),
    )


def test_history_ends_at_the_anchor_and_repeats_the_first_frame_before_the_start() -> None:
    """History is the 5 frames up to and including t; missing ones repeat frame 0."""
    assert clip_indices(6, 20, 10.0, SPEC).tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                                        14]
    assert clip_indices(2, 20, 10.0, SPEC)[:5].tolist() == [0, 0, 0, 1, 2]


def test_future_repeats_the_last_frame_past_the_end() -> None:
    """The 8 future frames after t hold at the last frame once the episode is over."""
    assert clip_indices(17, 20, 10.0, SPEC)[5:].tolist() == [18, 19, 19, 19, 19, 19, 19, 19]


def test_faster_dataset_frames_are_picked_at_the_policy_fps() -> None:
    """20 Hz dataset frames feed a 10 fps history: every other frame, ending at t."""
    assert clip_indices(10, 40, 20.0, SPEC)[:5].tolist() == [2, 4, 6, 8, 10]


def test_anchors_without_full_history_are_skipped_when_padding_is_off() -> None:
    """pad_history=False starts at the first anchor with 5 real frames; stride thins."""
    no_pad = SampleSpec(5, 8, 10.0, 4, 0.1, anchor_stride=2, pad_history=False)
    assert anchor_frames(12, 10.0, no_pad).tolist() == [4, 6, 8, 10]
    assert anchor_frames(12, 10.0, SPEC).tolist() == list(range(12))


def test_clip_tiles_the_cameras_side_by_side_in_topic_order() -> None:
    """Both cameras' frames at the clip's indices, camera 0 left of camera 1."""
    clip = episode_clip(_episode(), 6, SPEC)
    assert clip.shape == (13, 4, 12, 3) and clip.dtype == np.uint8
    assert clip[:, 0, 0, 0].tolist() == clip_indices(6, 20, 10.0, SPEC).tolist()
    assert clip[0, 0, :6, 1].tolist() == [0] * 6 and clip[0, 0, 6:, 1].tolist() == [1] * 6


def test_chunk_is_the_action_at_t_plus_k_dt_held_after_the_end() -> None:
    """With 20 Hz control, the chunk interpolates actions on the control grid at t + k dt;
    past the last control step the last action holds; the state is the one at t."""
    episode = _episode(frames=20, rate=20.0)
    state, targets = anchor_targets(episode, np.array([3, 19]), SPEC)
    np.testing.assert_allclose(state[0], [0.3, -0.3], atol=1e-6)
    expected = 10 * (0.3 + 0.1 * np.arange(4))
    np.testing.assert_allclose(targets[0, :, 0], expected, atol=1e-5)
    np.testing.assert_allclose(targets[0, :, 1], expected + 1, atol=1e-5)
    last = 10 * episode.control_times[-1]
    np.testing.assert_allclose(targets[1, :, 0], [min(10 * 1.9, last)] + [last] * 3, atol=1e-5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("samples")
    bags = []
    for i in range(3):
        spec = DemoSpec(duration_s=1.5, motion_offset=0.3 * i, instruction_topic=INSTRUCTION_TOPIC,
                        seed=i)
        bags.append(write_demo_bag(root / f"bag{i}", spec).path)
    profile = RecordingProfile.load(REPO_ROOT / "config" / "ur5e.yaml")
    return build_dataset(bags, profile, root / "dataset", val_fraction=0.34, progress=False)


def test_relative_chunks_get_their_own_statistics(dataset) -> None:
    """Relative chunks are targets minus the state at t; their statistics are fitted on the
    coded train chunks (not the dataset's absolute action stats); state stats are the
    dataset's."""
    table = build_table(dataset, SPEC)
    train = table.rows(dataset.split("train"), with_actions=True)
    assert 0 < len(train) < len(table)
    relative = coded_actions(table, train, ActionCoding("relative"))
    np.testing.assert_allclose(relative, table.targets[train] - table.state[train][:, None],
                               atol=1e-6)
    stats = fit_norm_stats(dataset, table, train, ActionCoding("relative"))
    fitted = Normalizer.fit(relative)
    np.testing.assert_allclose(stats.action.mean, fitted.mean)
    np.testing.assert_allclose(stats.action.std, fitted.std)
    np.testing.assert_array_equal(stats.state.mean, dataset.state_stats.mean)
    absolute = fit_norm_stats(dataset, table, train, ActionCoding("absolute"))
    assert np.all(stats.action.std < absolute.action.std)


def test_no_train_actions_is_a_clear_error(dataset) -> None:
    """Statistics need action chunks: none at all is a ValueError, not NaN statistics."""
    table = build_table(dataset, SPEC)
    with pytest.raises(ValueError, match="train split"):
        fit_norm_stats(dataset, table, np.zeros(0, np.int64), ActionCoding("relative"))


def test_a_local_cosmos_folder_also_supplies_the_t5_encoder(dataset, tmp_path) -> None:
    """An offline copy of the hub repo (transformer/, vae/, text_encoder/, tokenizer/) serves
    the T5 encoder too, instead of the preset's hub id that cannot be reached offline."""
    for sub in ("transformer", "vae", "text_encoder", "tokenizer"):
        (tmp_path / sub).mkdir()
    folder = str(tmp_path.resolve())
    config = build_policy_config(PolicySpec(preset="paper"), dataset, backbone=folder)
    assert config.backbone.source == folder
    assert config.backbone.text_encoder_source == folder
    (tmp_path / "tokenizer").rmdir()  # a stage-1 output: transformer/ and vae/ only
    config = build_policy_config(PolicySpec(preset="paper"), dataset, backbone=folder)
    assert config.backbone.text_encoder_source == COSMOS_PREDICT2_2B_HUB_ID


def test_decoder_size_comes_from_the_spec(dataset) -> None:
    """policy.decoder_width/decoder_depth resize the decoder; a width the heads cannot split,
    or a size below 1, is a ConfigError naming the field."""
    config = build_policy_config(PolicySpec(preset="tiny", decoder_width=96, decoder_depth=3),
                                 dataset)
    assert (config.decoder.width, config.decoder.depth) == (96, 3)
    with pytest.raises(ConfigError, match="divisible by heads"):
        build_policy_config(PolicySpec(preset="tiny", decoder_width=66), dataset)
    with pytest.raises(ConfigError, match=r"policy\.decoder_depth"):
        PolicySpec(preset="tiny", decoder_depth=0)


def test_instruction_readout_comes_from_the_spec_and_reads_the_history(dataset) -> None:
    """policy.instruction_readout turns the decoder's readout on over the backbone's history
    latent frames, which follow a changed frame size; a negative rank is a ConfigError."""
    config = build_policy_config(PolicySpec(preset="tiny", instruction_readout=16, height=64,
                                            width=64), dataset)
    assert config.decoder.instruction_readout == 16
    assert config.decoder.readout_frames == config.backbone.history_latent_frames == 2
    assert config.decoder.readout_tokens == 2 * 4 * 4
    assert build_policy_config(PolicySpec(preset="tiny"), dataset).decoder.instruction_readout == 0
    with pytest.raises(ConfigError, match=r"policy\.instruction_readout"):
        PolicySpec(preset="tiny", instruction_readout=-1)


def test_frame_width_is_per_camera(dataset) -> None:
    """policy.width is one view's: a dataset of two cameras trains on frames twice as wide."""
    two = dataclasses.replace(dataset, camera_topics=(*dataset.camera_topics, "/wrist/image"))
    config = build_policy_config(PolicySpec(preset="tiny", height=64, width=64), two)
    assert config.cameras == 2
    assert (config.backbone.height, config.backbone.width) == (64, 128)
    assert config.decoder.video_grid == (4, 4, 8)


def test_start_anchors_are_drawn_more_often() -> None:
    """Anchors before data.start_s repeat start_repeat times, the rest stay once, in order;
    a stage-1 config, which would ignore them, refuses them."""
    rows = np.array([10, 11, 12, 13])
    anchor_s = np.array([0.0, 0.5, 1.0, 1.5])
    out = oversample_start(rows, anchor_s, SampleConfig(start_s=1.0, start_repeat=3))
    assert out.tolist() == [10, 10, 10, 11, 11, 11, 12, 13]
    assert oversample_start(rows, anchor_s, SampleConfig()).tolist() == rows.tolist()
    with pytest.raises(ConfigError, match="start_repeat"):
        SampleConfig(start_s=1.0, start_repeat=0)
    with pytest.raises(ConfigError, match="stage 1"):
        VideoTrainConfig(data=SampleConfig(start_s=1.0, start_repeat=3))
