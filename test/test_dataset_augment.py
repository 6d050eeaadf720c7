"""Colour-swap augmentation: channels permuted, colour words renamed to match, motions and
splits kept."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from vam_policy.data.augment import (
    ColorWords,
    color_swapped,
    color_variants,
    swap_permutations,
    swapped_from,
    write_color_swapped,
)
from vam_policy.data.cli import add_dataset_commands
from vam_policy.data.dataset import load_dataset, write_dataset
from vam_policy.data.episodes import Episode

RED, GREY = (200, 10, 20), (90, 90, 90)


def _episode(instruction: str, seed: int) -> Episode:
    """Two frames: a red square on grey; random state and actions."""
    rng = np.random.default_rng(seed)
    frames = np.tile(np.asarray(GREY, np.uint8), (2, 8, 8, 1))
    frames[:, 2:4, 2:4] = RED
    times = np.arange(4) / 10.0
    return Episode(
        source=f"demo{seed}", instruction=instruction, instruction_source="flag",
        action_source="commands", joint_names=("j1", "j2"), camera_topics=("/cam",),
        fps=5.0, control_rate_hz=10.0, start_ns=0, frame_times=np.arange(2) / 5.0,
        frames=(frames,), control_times=times,
        state=rng.normal(size=(4, 2)).astype(np.float32),
        action=rng.normal(size=(4, 2)).astype(np.float32))


def test_the_red_thing_is_renamed_to_the_colour_it_is_painted() -> None:
    """(g, r, b) channel order paints red pixels green: "red" becomes "green" and back."""
    episode = _episode("put the red cube on the green one, not reddish", 0)
    swapped = color_swapped(episode, (1, 0, 2), ColorWords())
    assert swapped.instruction == "put the green cube on the red one, not reddish"
    assert tuple(swapped.frames[0][0, 2, 2]) == (10, 200, 20)
    assert tuple(swapped.frames[0][0, 0, 0]) == GREY
    np.testing.assert_array_equal(swapped.action, episode.action)
    np.testing.assert_array_equal(swapped.state, episode.state)


@pytest.mark.parametrize("permutation", swap_permutations())
def test_a_copy_names_the_episode_it_was_made_from(permutation: tuple[int, int, int]) -> None:
    """`swapped_from` undoes what `color_swapped` appends to the source, and only that."""
    episode = _episode("lift the red cube", 0)
    copy = color_swapped(episode, permutation, ColorWords())
    assert copy.source != episode.source
    assert swapped_from(copy.source) == episode.source
    for other in ("demos/lift_red_0003", "demos/lift_red_0003#xyz", "a#rgb/lift_red_0003"):
        assert swapped_from(other) == other


@pytest.mark.parametrize("permutation", swap_permutations())
def test_each_permutation_names_the_channel_a_red_pixel_lands_in(
        permutation: tuple[int, int, int]) -> None:
    """Whatever the permutation, the word for the red cube names its new dominant channel."""
    swapped = color_swapped(_episode("lift the red cube", 0), permutation, ColorWords())
    channel = int(np.argmax(swapped.frames[0][0, 2, 2]))
    assert swapped.instruction == f"lift the {ColorWords().by_channel[channel]} cube"


def test_cyclic_swaps_paint_each_object_in_each_colour_once() -> None:
    """With the identity, the two cyclic shifts put a red pixel in each channel once, and each
    copy's instruction names the colour it is painted; an unknown set is an error."""
    episode = _episode("lift the red cube", 0)
    copies = list(color_variants(episode, ColorWords(), swaps="cyclic"))
    assert len(copies) == 3
    channels = [int(np.argmax(copy.frames[0][0, 2, 2])) for copy in copies]
    assert sorted(channels) == [0, 1, 2]
    assert [c.instruction for c in copies] == [
        f"lift the {ColorWords().by_channel[channel]} cube" for channel in channels]
    with pytest.raises(ValueError, match="unknown swap set"):
        swap_permutations("some")


def test_colour_words_must_be_three_distinct_words() -> None:
    with pytest.raises(ValueError, match="three distinct"):
        ColorWords("red", "red", "blue")


def test_augmented_dataset_has_six_copies_each_in_its_episodes_split(tmp_path: Path) -> None:
    """Copies of a val episode stay in val (no train layout leaks into validation); the CLI
    verb writes the same dataset."""
    episodes = [_episode(f"lift the {c} cube", i) for i, c in enumerate(("red", "blue", "green"))]
    source = write_dataset(episodes, 3, tmp_path / "src", profile="sim",
                           splits=["train", "val", "train"])
    out = write_color_swapped(source, tmp_path / "aug", ColorWords(), progress=False)
    assert len(out.episodes) == 18
    assert [e.split for e in out.episodes] == ["train"] * 6 + ["val"] * 6 + ["train"] * 6
    assert sorted(e.instruction for e in out.episodes[6:12]) == sorted(
        ["lift the blue cube"] * 2 + ["lift the red cube"] * 2 + ["lift the green cube"] * 2)
    np.testing.assert_allclose(out.state_stats.mean, source.state_stats.mean, rtol=1e-6)

    parser = argparse.ArgumentParser()
    add_dataset_commands(parser.add_subparsers())
    args = parser.parse_args(["dataset", "augment-colors", "--dataset", str(tmp_path / "src"),
                              "--out", str(tmp_path / "cli")])
    assert args.func(args) == 0
    assert [e.instruction for e in load_dataset(tmp_path / "cli").episodes] == [
        e.instruction for e in out.episodes]
    args = parser.parse_args(["dataset", "augment-colors", "--dataset", str(tmp_path / "src"),
                              "--out", str(tmp_path / "cyclic"), "--swaps", "cyclic"])
    assert args.func(args) == 0
    cyclic = load_dataset(tmp_path / "cyclic")
    assert len(cyclic.episodes) == 9
    assert [e.split for e in cyclic.episodes] == ["train"] * 3 + ["val"] * 3 + ["train"] * 3


def test_splits_must_match_the_episodes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected 2 splits"):
        write_dataset([_episode("go", 0), _episode("go", 1)], 2, tmp_path / "d", profile="sim",
                      splits=["train"])
