"""Episodes -> training samples: a frame clip around an anchor, the state there, an action chunk.

An anchor is a frame k of the episode's frame grid (t = k / dataset fps), every
`anchor_stride`-th. For it:
- history: `history_frames` frames at the policy fps ending at t, each the newest dataset frame
  not later than its time (the rule of the node's `FrameHistory`). Times before the episode
  start repeat the first frame (`pad_history`), or such anchors are skipped.
- future: the next 4 * `future_latent_frames` frames after t, the last frame repeated past the
  end. History and future are one clip of 1 + 4m frames: the causal VAE encodes it in one pass
  and its first latents are exactly the history's (see `VideoBackbone.encode_video`).
- state: joint positions at t, linearly interpolated on the control grid.
- targets: the commanded action interpolated at t + k * action_dt, k = 0..H-1, held at the
  last value past the end; coded (`ActionCoding`) and normalized only when batched, so one
  table (and one cache) serves both action representations.
Cameras are tiled with `tile_cameras` and clips preprocessed with the policy's own
`FramePreprocess`, exactly as the node does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from vam_policy.data.dataset import Dataset
from vam_policy.data.episodes import Episode
from vam_policy.model.backbone_config import VAE_TEMPORAL_FACTOR
from vam_policy.model.policy import NormStats
from vam_policy.model.policy_config import PolicyConfig
from vam_policy.model.transforms import ActionCoding, Normalizer, tile_cameras
from vam_policy.train.config import SampleConfig

_EPS = 1e-6  # absorbs float error of k / fps * fps before flooring to a frame index


@dataclass(frozen=True)
class SampleSpec:
    """Everything that decides which frames and targets a sample holds."""

    history_frames: int
    future_frames: int
    fps: float
    horizon: int
    action_dt: float
    anchor_stride: int = 1
    pad_history: bool = True

    @classmethod
    def from_policy(cls, config: PolicyConfig, data: SampleConfig,
                    future: bool = True) -> SampleSpec:
        """The samples of `config`'s policy; `future=False` leaves out the future frames (a
        decoder that only ever sees tau_v = 1, pure noise, never needs them)."""
        return cls(
            history_frames=config.history_frames,
            future_frames=VAE_TEMPORAL_FACTOR * config.backbone.future_latent_frames * future,
            fps=config.fps,
            horizon=config.horizon,
            action_dt=config.action_dt,
            anchor_stride=data.anchor_stride,
            pad_history=data.pad_history,
        )

    @property
    def clip_frames(self) -> int:
        """History + future frames: 1 + 4 * (m + future latent frames)."""
        return self.history_frames + self.future_frames


def anchor_frames(frame_count: int, dataset_fps: float, spec: SampleSpec) -> np.ndarray:
    """Frame indices `[A]` of an episode's anchors."""
    anchors = np.arange(0, frame_count, spec.anchor_stride)
    if not spec.pad_history:
        reach = (spec.history_frames - 1) / spec.fps
        anchors = anchors[anchors / dataset_fps - reach >= -_EPS]
    return anchors


def clip_indices(anchor: int, frame_count: int, dataset_fps: float,
                 spec: SampleSpec) -> np.ndarray:
    """Dataset frame indices `[history + future]` of the clip around `anchor`, oldest first."""
    offsets = np.arange(-(spec.history_frames - 1), spec.future_frames + 1) / spec.fps
    times = anchor / dataset_fps + offsets
    return np.clip(np.floor(times * dataset_fps + _EPS).astype(np.int64), 0, frame_count - 1)


def episode_clip(episode: Episode, anchor: int, spec: SampleSpec) -> np.ndarray:
    """uint8 `[history + future, H, W * cameras, 3]`: the cameras' clips, tiled."""
    index = clip_indices(anchor, len(episode.frame_times), episode.fps, spec)
    return tile_cameras([frames[index] for frames in episode.frames])


def _interpolate(times: np.ndarray, grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values `[N, J]` on `grid [N]` at `times [...]` -> `[..., J]`; held outside the grid."""
    flat = times.reshape(-1)
    out = np.stack([np.interp(flat, grid, values[:, j]) for j in range(values.shape[1])], -1)
    return out.reshape(*times.shape, values.shape[1]).astype(np.float32)


def anchor_targets(episode: Episode, anchors: np.ndarray,
                   spec: SampleSpec) -> tuple[np.ndarray, np.ndarray]:
    """State `[A, J]` at each anchor and absolute action targets `[A, H, J]` after it."""
    times = np.asarray(anchors, np.float64) / episode.fps  # [A]
    state = _interpolate(times, episode.control_times, episode.state)
    chunk_times = times[:, None] + np.arange(spec.horizon) * spec.action_dt  # [A, H]
    return state, _interpolate(chunk_times, episode.control_times, episode.action)


@dataclass(frozen=True)
class SampleTable:
    """Every sample of a dataset, one row each; latents live elsewhere (cache or live VAE)."""

    episode: np.ndarray
    """[S] dataset episode index."""
    anchor: np.ndarray
    """[S] anchor frame index in its episode."""
    state: np.ndarray
    """[S, J] float32 joint state at the anchor."""
    targets: np.ndarray
    """[S, H, J] float32 absolute joint targets (NaN where the episode has no actions)."""
    instruction: np.ndarray
    """[S] index into `instructions`."""
    instructions: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.episode)

    def rows(self, episodes: Iterable[int], with_actions: bool) -> np.ndarray:
        """Row indices of the given episodes; `with_actions` keeps rows with finite targets."""
        keep = np.isin(self.episode, list(episodes))
        if with_actions:
            finite = np.isfinite(self.targets).all(axis=(1, 2)) & np.isfinite(self.state).all(1)
            keep &= finite
        return np.flatnonzero(keep)


def table_from_parts(dataset: Dataset, parts: dict[int, tuple[np.ndarray, ...]]) -> SampleTable:
    """A table from per-episode (anchors [A], state [A, J], targets [A, H, J]) parts."""
    instructions = tuple(sorted({e.instruction for e in dataset.episodes}))
    lookup = {text: i for i, text in enumerate(instructions)}
    order = sorted(parts)
    counts = [len(parts[i][0]) for i in order]
    return SampleTable(
        episode=np.repeat(np.asarray(order, np.int64), counts),
        anchor=np.concatenate([parts[i][0] for i in order]).astype(np.int64),
        state=np.concatenate([parts[i][1] for i in order]).astype(np.float32),
        targets=np.concatenate([parts[i][2] for i in order]).astype(np.float32),
        instruction=np.repeat(
            np.asarray([lookup[dataset.episodes[i].instruction] for i in order], np.int64),
            counts),
        instructions=instructions,
    )


def episode_part(episode: Episode, spec: SampleSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchors, state, targets) of one episode."""
    anchors = anchor_frames(len(episode.frame_times), episode.fps, spec)
    return (anchors, *anchor_targets(episode, anchors, spec))


def build_table(dataset: Dataset, spec: SampleSpec) -> SampleTable:
    """The table of every episode (each loaded once; the cache builds it while encoding)."""
    return table_from_parts(dataset, {i: episode_part(dataset.load_episode(i), spec)
                                      for i in range(len(dataset.episodes))})


def coded_actions(table: SampleTable, rows: np.ndarray, coding: ActionCoding) -> np.ndarray:
    """The chunks of `rows` in the model's action space `[R, H, J]` (not yet normalized)."""
    return coding.encode(table.targets[rows], table.state[rows])


def fit_norm_stats(dataset: Dataset, table: SampleTable, train_rows: np.ndarray,
                   coding: ActionCoding) -> NormStats:
    """State statistics from the dataset; action statistics over the CODED train chunks.

    Relative chunks (targets minus the state) have their own, much smaller spread than
    absolute positions; the dataset's per-step action statistics would fit neither well.
    """
    if len(train_rows) == 0:
        raise ValueError("expected training samples with actions in the train split, found "
                         "none (are all train episodes action-free?)")
    return NormStats(dataset.state_stats,
                     Normalizer.fit(coded_actions(table, train_rows, coding)))
