"""Colour-swap augmentation: each episode again with its frames' RGB channels permuted and the
instruction's colour words swapped to match.

A policy told "lift the red cube" must find the red thing in the picture. With few layouts a
decoder can instead learn each layout's motion by heart (which picture, which instruction). A
copy of the same demonstration in which the red cube is painted green and the instruction says
"green" keeps every motion and breaks that shortcut: only reading the colour word against the
picture's colours explains all copies. Channel permutations leave greys (table, arm, floor)
unchanged, so the copies are pictures the camera could take of a scene with repainted objects.
The two cyclic shifts alone (`SWAP_SETS["cyclic"]`) already paint every object in each colour
once, at half the copies of all five.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vam_policy.data.dataset import Dataset, write_dataset
from vam_policy.data.episodes import Episode

RGB = 3
_SWAP_SUFFIX = re.compile(r"#[rgb]{3}$")  # what color_swapped appends to a copy's source
Permutation = tuple[int, int, int]
"""Output channel i takes input channel p[i]."""


@dataclasses.dataclass(frozen=True)
class ColorWords:
    """The words naming objects whose colour sits mostly in the R, G and B channel."""

    red: str = "red"
    green: str = "green"
    blue: str = "blue"

    def __post_init__(self) -> None:
        words = self.by_channel
        if len(set(words)) != RGB or not all(re.fullmatch(r"\w+", w) for w in words):
            raise ValueError(f"expected three distinct single-word colour names, got {words}")

    @property
    def by_channel(self) -> tuple[str, str, str]:
        return (self.red, self.green, self.blue)

    def swap(self, text: str, permutation: Permutation) -> str:
        """`text` with every colour word renamed as `permutation` repaints it: what is red
        (channel 0) in the input shows in the output channel i with permutation[i] == 0."""
        words = self.by_channel
        renamed = {words[src]: words[dst] for dst, src in enumerate(permutation)}
        pattern = r"\b(" + "|".join(map(re.escape, words)) + r")\b"
        return re.sub(pattern, lambda m: renamed[m.group(1)], text)


SWAP_SETS: dict[str, tuple[Permutation, ...]] = {
    "all": tuple(p for p in itertools.permutations(range(RGB)) if p != tuple(range(RGB))),
    "cyclic": ((1, 2, 0), (2, 0, 1)),
}
"""Which copies to add: all five non-identity permutations, or the two cyclic shifts."""


def swap_permutations(swaps: str = "all") -> list[Permutation]:
    """The channel permutations of a swap set (`SWAP_SETS`), the identity left out."""
    if swaps not in SWAP_SETS:
        raise ValueError(f"unknown swap set {swaps!r}; expected one of {sorted(SWAP_SETS)}")
    return list(SWAP_SETS[swaps])


def swapped_from(source: str) -> str:
    """The source of the episode a colour-swapped copy's `source` was made from (`...#brg` ->
    `...`); any other source unchanged."""
    return _SWAP_SUFFIX.sub("", source)


def color_swapped(episode: Episode, permutation: Permutation, words: ColorWords) -> Episode:
    """`episode` with every camera's channels permuted and its instruction's colour words
    renamed to match; motions, states and times unchanged."""
    if sorted(permutation) != list(range(RGB)):
        raise ValueError(f"expected a permutation of (0, 1, 2), got {permutation}")
    frames = tuple(np.ascontiguousarray(f[..., list(permutation)]) for f in episode.frames)
    tag = "".join("rgb"[c] for c in permutation)
    return dataclasses.replace(
        episode, frames=frames, instruction=words.swap(episode.instruction, permutation),
        source=f"{episode.source}#{tag}", notes=(*episode.notes, f"colour swap {tag}"))


def color_variants(episode: Episode, words: ColorWords,
                   swaps: str = "all") -> Iterator[Episode]:
    """The episode, then its colour-swapped copies."""
    yield episode
    for permutation in swap_permutations(swaps):
        yield color_swapped(episode, permutation, words)


def write_color_swapped(dataset: Dataset, out: str | Path, words: ColorWords,
                        swaps: str = "all", progress: bool = True) -> Dataset:
    """Write `dataset` with every episode's colour-swapped copies (`swaps`: "all" five or the
    two "cyclic" ones) as the dataset `out`; each copy keeps its episode's split, so validation
    never sees a train layout."""
    copies = len(swap_permutations(swaps)) + 1
    indices = tqdm(range(len(dataset.episodes)), desc="episodes", unit="episode",
                   disable=not progress)
    episodes = (copy for i in indices
                for copy in color_variants(dataset.load_episode(i), words, swaps))
    return write_dataset(
        episodes, copies * len(dataset.episodes), out, profile=dataset.profile,
        frame_codec=dataset.frame_codec,
        provenance={"color_swapped_from": str(dataset.root),
                    "color_words": list(words.by_channel), "color_swaps": swaps},
        splits=[entry.split for entry in dataset.episodes for _ in range(copies)])
