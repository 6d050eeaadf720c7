"""VAE latents and text embeddings computed once, so later epochs skip the VAE and text encoder.

Layout of a cache folder (format "vam-latent-cache", version 1):

    cache.json                 fingerprint (and its parts, to say what changed)
    episode_NNNNNN.safetensors per dataset episode, rows in anchor order:
                                 anchors  int64 [A]            anchor frame indices
                                 latents  [A, 16, T', h, w]    history (+ future) clip latents
                                 state    float32 [A, J], targets float32 [A, H, J]
    text.safetensors           embeds [I, L, D], one row per instruction (metadata: the texts)

Every file carries the fingerprint in its metadata: the dataset (dataset.json, stats and each
episode file's size and mtime), the sample layout, frame size, the VAE weights and the text
encoder. A file whose fingerprint, keys or shapes are off, or which does not parse, is
re-encoded with a warning; nothing stale is ever read. Under DDP each process encodes its share
of the episodes. `LiveLatents` is the same interface without the cache (`--no-cache`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from vam_policy.data.dataset import DATASET_FILE, STATS_FILE, Dataset
from vam_policy.data.episodes import Episode
from vam_policy.model.backbone_config import LATENT_CHANNELS, VAE_TEMPORAL_FACTOR, torch_dtype
from vam_policy.model.policy import VAMPolicy
from vam_policy.train.distributed import Dist
from vam_policy.train.samples import (
    SampleSpec,
    SampleTable,
    anchor_frames,
    episode_clip,
    episode_part,
    table_from_parts,
)

FORMAT = "vam-latent-cache"
VERSION = 1
MANIFEST = "cache.json"
TEXT_FILE = "text.safetensors"


class CacheError(ValueError):
    """A cache file became unreadable while training (it was valid when training started)."""


class LatentSource(Protocol):
    """Latents and text embeddings of table rows, on the training device."""

    table: SampleTable

    def latents(self, rows: np.ndarray) -> torch.Tensor:
        """`[B, 16, T_hist + T_fut, h, w]` float32 clip latents (T_fut = 0 without future)."""
        ...

    def text(self, rows: np.ndarray) -> torch.Tensor:
        """`[B, L, D]` instruction embeddings."""
        ...


@dataclass(frozen=True)
class CacheReport:
    """What preparing the cache did: episode files encoded now, reused, and why."""

    folder: Path
    built: int
    reused: int
    corrupt: int
    changed: tuple[str, ...]
    """Fingerprint parts that differ from the previous manifest (why files were re-encoded)."""


# ---- fingerprint ----------------------------------------------------------------------------


def _sha(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()[:16]


def dataset_fingerprint(dataset: Dataset) -> str:
    """Index, statistics and the size and mtime of each episode file (contents not read)."""
    files = [(e.file, (dataset.root / e.file).stat()) for e in dataset.episodes]
    listing = json.dumps([(name, s.st_size, s.st_mtime_ns) for name, s in files]).encode()
    return _sha((dataset.root / DATASET_FILE).read_bytes(),
                (dataset.root / STATS_FILE).read_bytes(), listing)


def module_fingerprint(module: nn.Module) -> str:
    """Hash of every weight and of a VAE's latent statistics: a changed VAE changes every
    latent (where it was loaded from does not)."""
    digest = hashlib.sha256()
    config = getattr(module, "config", {})
    stats = {key: config[key] for key in ("latents_mean", "latents_std") if key in config}
    digest.update(json.dumps(stats, sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def cache_fingerprint(dataset: Dataset, spec: SampleSpec, policy: VAMPolicy,
                      cache_dtype: str) -> dict[str, str]:
    """The parts that decide the cache's contents; the text part is the encoder's config
    (hashing an 11B T5 on every start would cost more than it saves)."""
    bb = policy.config.backbone
    return {
        "format": f"{FORMAT}/{VERSION}",
        "dataset": dataset_fingerprint(dataset),
        "samples": json.dumps(asdict(spec), sort_keys=True),
        "frames": f"{bb.height}x{bb.width}, {policy.config.cameras} camera(s), {cache_dtype}",
        "vae": module_fingerprint(policy.backbone.vae),
        "text": f"{bb.text_encoder} {bb.text_encoder_source} {bb.text_max_tokens}",
    }


def _combined(parts: dict[str, str]) -> str:
    return _sha(json.dumps(parts, sort_keys=True).encode())


# ---- encoding ---------------------------------------------------------------------------------


@torch.no_grad()
def encode_clips(policy: VAMPolicy, episode: Episode, anchors: np.ndarray, spec: SampleSpec,
                 batch: int) -> torch.Tensor:
    """Latents `[A, 16, T', h, w]` (float32, on the policy's device) of the anchors' clips."""
    out = []
    for start in range(0, len(anchors), batch):
        clips = np.stack([policy.frames(episode_clip(episode, int(a), spec))
                          for a in anchors[start:start + batch]])  # [b, 3, T, h, w]
        out.append(policy.backbone.encode_video(torch.from_numpy(clips).to(policy.device)))
    return torch.cat(out)


def _episode_file(index: int) -> str:
    return f"episode_{index:06d}.safetensors"


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


@dataclass(frozen=True)
class _Expected:
    """What a valid episode file holds."""

    anchors: np.ndarray
    latent_shape: tuple[int, ...]
    joints: int
    horizon: int


def _check_episode_file(path: Path, fingerprint: str, expected: _Expected) -> str | None:
    """None if the file is valid, else why not."""
    if not path.is_file():
        return "missing"
    try:
        with safe_open(str(path), "pt") as file:
            if (file.metadata() or {}).get("fingerprint") != fingerprint:
                return "stale"
            anchors = file.get_tensor("anchors").numpy()
            shapes = {k: tuple(file.get_slice(k).get_shape()) for k in ("latents", "state",
                                                                        "targets")}
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as error:
        return f"corrupt ({error})"
    count = len(expected.anchors)
    wanted = {"latents": (count, *expected.latent_shape), "state": (count, expected.joints),
              "targets": (count, expected.horizon, expected.joints)}
    if not np.array_equal(anchors, expected.anchors) or shapes != wanted:
        return f"corrupt (shapes {shapes}, expected {wanted})"
    return None


def prepare_cache(folder: Path, dataset: Dataset, spec: SampleSpec, policy: VAMPolicy,
                  cache_dtype: str, encode_batch: int, dist: Dist,
                  log: Callable[[str], None], progress: bool = False) -> CacheReport:
    """Make `folder` hold valid latents for every episode and embeddings for every instruction.

    Collective under DDP: every process must call it. `progress`: a bar over rank 0's episodes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    parts = cache_fingerprint(dataset, spec, policy, cache_dtype)
    fingerprint = _combined(parts)
    changed: tuple[str, ...] = ()
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text()).get("parts", {})
            changed = tuple(k for k in parts if old.get(k) != parts[k])
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            changed = ("manifest",)
    bb = policy.config.backbone
    frames = bb.history_latent_frames + spec.future_frames // VAE_TEMPORAL_FACTOR
    expected_latents = (LATENT_CHANNELS, frames, *bb.latent_size)
    dtype = torch_dtype(cache_dtype)
    meta = {"format": FORMAT, "version": str(VERSION), "fingerprint": fingerprint}
    built = reused = corrupt = 0
    mine = [i for i in range(len(dataset.episodes)) if i % dist.world == dist.rank]
    for i in tqdm(mine, desc="latent cache", unit="episode", dynamic_ncols=True,
                  disable=not (progress and dist.is_main)):
        entry = dataset.episodes[i]
        expected = _Expected(anchor_frames(entry.frames, dataset.fps, spec), expected_latents,
                             len(dataset.joint_names), spec.horizon)
        path = folder / _episode_file(i)
        problem = _check_episode_file(path, fingerprint, expected)
        if problem is None:
            reused += 1
            continue
        if problem.startswith("corrupt"):
            corrupt += 1
            log(f"warning: cache file {path} is {problem}; re-encoding it")
        episode = dataset.load_episode(i)
        anchors, state, targets = episode_part(episode, spec)
        latents = encode_clips(policy, episode, anchors, spec, encode_batch)
        _write_atomic(path, {"anchors": torch.from_numpy(anchors), "latents": latents.to(dtype),
                             "state": torch.from_numpy(state),
                             "targets": torch.from_numpy(targets)},
                      {**meta, "episode": entry.file})
        built += 1
    if dist.is_main:
        _prepare_text(folder / TEXT_FILE, dataset, policy, meta)
    totals = [int(dist.sum(v)) for v in (built, reused, corrupt)]
    dist.barrier()
    if dist.is_main:
        manifest.write_text(json.dumps({**meta, "parts": parts}, indent=2) + "\n")
    dist.barrier()
    if totals[0]:
        log(f"latent cache {folder}: encoded {totals[0]} episode(s), reused {totals[1]}"
            + (f" (changed: {', '.join(changed)})" if changed else ""))
    return CacheReport(folder, *totals, changed)


def _prepare_text(path: Path, dataset: Dataset, policy: VAMPolicy,
                  meta: dict[str, str]) -> None:
    instructions = sorted({e.instruction for e in dataset.episodes})
    try:
        with safe_open(str(path), "pt") as file:
            saved = file.metadata() or {}
            if (saved.get("fingerprint") == meta["fingerprint"]
                    and json.loads(saved.get("instructions", "null")) == instructions):
                return
    except (SafetensorError, OSError, json.JSONDecodeError):
        pass  # missing or corrupt: encode again
    embeds = policy.embed_instructions(instructions).float()
    _write_atomic(path, {"embeds": embeds},
                  {**meta, "instructions": json.dumps(instructions)})


# ---- reading ---------------------------------------------------------------------------------


class LatentCache:
    """A prepared cache: each batch slices its rows out of the memory-mapped files."""

    def __init__(self, folder: Path, dataset: Dataset, device: torch.device) -> None:
        self.folder = folder
        self.device = device
        self._handles = []  # keeps the memory maps open for the slices below
        self._files = {}
        parts: dict[int, tuple[np.ndarray, ...]] = {}
        try:
            for i in range(len(dataset.episodes)):
                file = safe_open(str(folder / _episode_file(i)), "pt")
                self._handles.append(file)
                self._files[i] = file.get_slice("latents")
                parts[i] = tuple(file.get_tensor(k).numpy() for k in ("anchors", "state",
                                                                       "targets"))
            with safe_open(str(folder / TEXT_FILE), "pt") as text:
                instructions = tuple(json.loads((text.metadata() or {})["instructions"]))
                embeds = text.get_tensor("embeds")
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
            raise CacheError(f"latent cache {folder}: unreadable ({error}); delete the folder "
                             "to rebuild it") from None
        self.table = table_from_parts(dataset, parts)
        if instructions != self.table.instructions:
            raise CacheError(f"latent cache {folder}: {TEXT_FILE} holds other instructions "
                             "than the dataset; delete it to rebuild")
        self._embeds = embeds.to(device)
        starts = np.cumsum([0] + [len(parts[i][0]) for i in sorted(parts)])
        self._position = np.arange(len(self.table)) - starts[self.table.episode]

    def latents(self, rows: np.ndarray) -> torch.Tensor:
        try:
            slices = [self._files[int(self.table.episode[r])][int(p):int(p) + 1]
                      for r, p in zip(rows, self._position[rows], strict=True)]
        except (SafetensorError, OSError) as error:
            raise CacheError(f"latent cache {self.folder}: read failed ({error}); delete the "
                             "folder to rebuild it") from None
        return torch.cat(slices).to(self.device, torch.float32)

    def text(self, rows: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(self.table.instruction[rows]).to(self.device)
        return self._embeds[index]


class LiveLatents:
    """`--no-cache`: every batch runs the VAE on freshly preprocessed clips.

    Decoded episodes are kept (least recently used first out) so the comparison with the cache
    measures the VAE and preprocessing, not JPEG decoding.
    """

    def __init__(self, dataset: Dataset, spec: SampleSpec, policy: VAMPolicy,
                 episodes_in_memory: int = 16) -> None:
        self.dataset, self.spec, self.policy = dataset, spec, policy
        self._capacity = episodes_in_memory
        self._episodes: OrderedDict[int, Episode] = OrderedDict()
        parts = {i: episode_part(self._episode(i), spec) for i in range(len(dataset.episodes))}
        self.table = table_from_parts(dataset, parts)

    def _episode(self, index: int) -> Episode:
        if index in self._episodes:
            self._episodes.move_to_end(index)
        else:
            self._episodes[index] = self.dataset.load_episode(index)
            if len(self._episodes) > self._capacity:
                self._episodes.popitem(last=False)
        return self._episodes[index]

    @torch.no_grad()
    def latents(self, rows: np.ndarray) -> torch.Tensor:
        clips = np.stack([
            self.policy.frames(episode_clip(self._episode(int(self.table.episode[r])),
                                            int(self.table.anchor[r]), self.spec))
            for r in rows
        ])  # [B, 3, T, h, w]
        return self.policy.backbone.encode_video(torch.from_numpy(clips).to(self.policy.device))

    def text(self, rows: np.ndarray) -> torch.Tensor:
        texts = [self.table.instructions[i] for i in self.table.instruction[rows]]
        return self.policy.embed_instructions(texts).float()
