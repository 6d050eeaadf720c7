"""The policy side of the node: loading a checkpoint for a profile, and the inference thread.

Inference runs on its own thread so that a 30 ms (tiny, CPU) to 300 ms (2B, GPU) forward pass
never delays a callback or the control timer; torch releases the GIL while it computes. The
thread talks to the node only through `ObservationBuffers` (in), `RunState.running` (gate)
and two callbacks (out). No rclpy here.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vam_policy.model.checkpoint import CheckpointError, load_checkpoint, read_manifest
from vam_policy.model.policy import VAMPolicy
from vam_policy.ros.buffers import Observation, ObservationBuffers
from vam_policy.ros.parameters import NodeSettings


class StartupError(RuntimeError):
    """The node cannot start with these parameters and this checkpoint (message says why)."""


@dataclass(frozen=True, eq=False)
class LoadedPolicy:
    policy: VAMPolicy
    checkpoint_id: str


def joint_names_problem(profile: tuple[str, ...], checkpoint: tuple[str, ...]) -> str | None:
    """Why the profile's joint_names cannot drive this checkpoint, or None when they match."""
    if profile == checkpoint:
        return None
    missing = [name for name in checkpoint if name not in profile]
    extra = [name for name in profile if name not in checkpoint]
    if missing or extra:
        return (f"joint_names of the profile do not match the checkpoint's: the checkpoint "
                f"needs {missing} which the profile lacks, the profile has {extra} which the "
                f"checkpoint does not know (checkpoint: {list(checkpoint)})")
    return (f"joint_names are in another order than the checkpoint's: profile "
            f"{list(profile)}, checkpoint {list(checkpoint)}")


def load_policy(settings: NodeSettings) -> LoadedPolicy:
    """Load `settings.checkpoint` and check it against the profile; StartupError otherwise."""
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise StartupError(f"device {settings.device!r}: CUDA is not available on this "
                           "machine; set device:=cpu")
    if settings.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Leave a core to the executor: otherwise OpenMP workers spinning for all cores starve
        # callbacks and the control timer (on 2 cores the tiny model slows from 30 ms to 2 s).
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    try:
        manifest = read_manifest(settings.checkpoint)
        policy = load_checkpoint(settings.checkpoint, device=settings.device,
                                 dtype=settings.dtype)
    except CheckpointError as error:
        raise StartupError(f"checkpoint {settings.checkpoint!r} failed to load: {error}") from None
    config = policy.config
    problem = joint_names_problem(settings.joint_names, config.joint_names)
    if problem:
        raise StartupError(problem)
    if len(settings.camera_topics) != config.cameras:
        raise StartupError(
            f"camera_topics has {len(settings.camera_topics)} topic(s) "
            f"{list(settings.camera_topics)} but the checkpoint was trained on "
            f"{config.cameras} camera view(s)"
        )
    name = Path(settings.checkpoint).resolve().name
    return LoadedPolicy(policy, f"{name} (format {manifest['format_version']})")


@dataclass(frozen=True, eq=False)
class InferenceResult:
    observation: Observation
    chunk: np.ndarray  # [H, J] absolute joint targets
    latency_s: float
    epoch: int


def replan_after_ns(last_stamp_ns: int, replan_steps: int, action_dt: float) -> int:
    """The stamp the next observation's frames must be newer than, after one stamped
    `last_stamp_ns`: `replan_steps` chunk steps on, less a millisecond (a frame stamped that
    close to the replan time counts as on time)."""
    return last_stamp_ns + max(0, round(replan_steps * action_dt * 1e9) - 10**6)


class InferenceWorker:
    """Loops while the node runs: newest observation -> policy.predict -> `on_result`.

    Waits for `running`, then for frames newer than the last observation used, so it never
    predicts twice from the same frames, and with `replan_steps` k > 0 for frames k chunk
    steps newer (within the same epoch), so the arm follows each chunk that long. `epoch()` is
    read before each prediction and handed back with the result: the node bumps it on pause,
    fault and instruction change, and drops results of an older epoch, so a chunk computed
    before a hold never runs after it.
    `settings()` is read each iteration, so runtime changes of tau_v, flow_steps and
    noise_scale apply to the next prediction. A ValueError from the observation or the policy
    goes to `on_error`.
    """

    def __init__(
        self,
        policy: VAMPolicy,
        buffers: ObservationBuffers,
        running: threading.Event,
        settings: Callable[[], NodeSettings],
        instruction: Callable[[], str],
        epoch: Callable[[], int],
        on_result: Callable[[InferenceResult], None],
        on_error: Callable[[str], None],
    ) -> None:
        self._policy = policy
        self._buffers = buffers
        self._running = running
        self._settings = settings
        self._instruction = instruction
        self._epoch = epoch
        self._on_result = on_result
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vam-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        config = self._policy.config
        last_stamp_ns: int | None = None
        last_epoch: int | None = None
        while not self._stop.is_set():
            if not self._running.wait(0.1):
                continue
            settings = self._settings()
            after_ns = last_stamp_ns
            if last_stamp_ns is not None and last_epoch == self._epoch():
                after_ns = replan_after_ns(last_stamp_ns, settings.replan_steps,
                                           config.action_dt)
            if not self._buffers.wait_for_frames_after(after_ns, timeout_s=0.1):
                continue
            try:
                observation = self._buffers.observation(
                    config.history_frames, config.fps, max_joint_gap_s=settings.max_obs_age_s
                )
                if observation is None:
                    self._stop.wait(0.01)  # history still filling up, or joints missing
                    continue
                last_stamp_ns = observation.stamp_ns
                epoch = last_epoch = self._epoch()
                start = time.perf_counter()
                chunk = self._policy.predict(
                    observation.frames, observation.joints.positions, self._instruction(),
                    tau_v=settings.tau_v, flow_steps=settings.flow_steps,
                    noise_scale=settings.noise_scale,
                )
            except ValueError as error:  # e.g. cameras of different heights cannot be tiled
                self._on_error(f"inference failed: {error}")
                continue
            latency = time.perf_counter() - start
            self._on_result(InferenceResult(observation, np.asarray(chunk), latency, epoch))
