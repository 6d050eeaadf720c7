"""The sim lift episodes of a dataset, each with where its named cube lay: what the sim
benchmarks (`probe_cube_position.py`, `first_chunk_error.py`) read."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vam_policy.data.dataset import Dataset, EpisodeEntry
from vam_policy.data.episodes import Episode
from vam_policy.sim.arm import SimArm
from vam_policy.sim.tasks import LiftTask, parse_episode_name


def lift_episodes(data: Dataset, arm: SimArm,
                  last_step: int) -> Iterator[tuple[EpisodeEntry, Episode, np.ndarray]]:
    """Each lift recording's (or colour-swapped copy's) dataset entry and episode that reaches
    step `last_step`, with the named cube's xy (m); `arm` is reset to the episode's layout."""
    for index, entry in enumerate(data.episodes):
        recorded = parse_episode_name(entry.source)
        if recorded is None or not isinstance(recorded[0], LiftTask):
            continue
        episode = data.load_episode(index)
        if last_step >= len(episode.action):
            continue
        arm.reset(*recorded)
        yield entry, episode, arm.cube_positions()[arm.task.cube][:2]
