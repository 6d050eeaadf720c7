"""Which action chunk the arm follows now: stamp alignment, exhaustion and blending.

Like openpi's ActionChunkBroker this wraps the policy's output rather than living inside the
policy, but it is driven by time stamps: inference takes a while, so a chunk computed from an
observation at t0 (step k meant for t0 + k*dt) arrives with its first steps already in the
past. Pure numpy; the node calls `submit` from its inference thread and `plan` from its timer
(guard the scheduler with a lock: it is not thread-safe by itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class TimedChunk:
    """A chunk on its time grid: step k at t0 + k*dt; steps >= usable are never executed."""

    positions: np.ndarray  # [H, J]
    t0: float
    dt: float
    usable: int

    def times(self) -> np.ndarray:
        return self.t0 + self.dt * np.arange(len(self.positions))

    def commanded(self, t: np.ndarray) -> np.ndarray:
        """Positions [n, J] this chunk commands at times t [n]: linear between its usable steps,
        holding the last usable one afterwards (as the node does once a chunk is used up)."""
        grid = self.times()[: self.usable]
        steps = self.positions[: self.usable]
        return np.stack([np.interp(t, grid, steps[:, j]) for j in range(steps.shape[1])], axis=1)


class ChunkScheduler:
    """Holds the newest action chunk and says which of its steps to send, and when.

    `execute_steps`: steps of each chunk used before it counts as exhausted (the node then
    holds until a newer chunk arrives). `blend_steps`: a newer chunk is faded in over this many
    of its steps, starting from the first step still ahead when it is first planned: there the
    weight of the new chunk is 0 (the point equals what the old chunk commands), and it rises
    linearly to 1 at `blend_steps` steps later.
    """

    def __init__(self, execute_steps: int, blend_steps: int) -> None:
        if isinstance(execute_steps, bool) or not isinstance(execute_steps, int) or (
            execute_steps < 1
        ):
            raise ValueError(f"execute_steps: expected an integer >= 1, got {execute_steps!r}")
        if isinstance(blend_steps, bool) or not isinstance(blend_steps, int) or blend_steps < 0:
            raise ValueError(f"blend_steps: expected an integer >= 0, got {blend_steps!r}")
        self.execute_steps = execute_steps
        self.blend_steps = blend_steps
        self._active: TimedChunk | None = None
        self._pending: TimedChunk | None = None
        self._newest_time: float | None = None
        self._num_joints: int | None = None

    @property
    def newest_observation_time(self) -> float | None:
        """Observation time (s) of the newest accepted chunk, None before the first one."""
        return self._newest_time

    def reset(self) -> None:
        """Forget all chunks (on pause, or when the instruction changes).

        The newest observation time is kept, so a chunk still in flight from before the reset
        cannot sneak in with an older observation.
        """
        self._active = self._pending = None

    def submit(self, chunk: np.ndarray, observation_time_s: float, dt: float) -> None:
        """Accept a chunk [H, J] computed from an observation at `observation_time_s` (s).

        Raises ValueError for a chunk from an older observation than the newest accepted one
        (out of order: the newer chunk already knows more), a non-finite chunk, a joint count
        that differs from earlier chunks, or a non-positive dt. An equal time replaces the
        chunk (a fresh sample from the same observation).
        """
        positions = np.array(chunk, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[0] < 1 or positions.shape[1] < 1:
            raise ValueError(f"chunk: expected shape [H, J] with H, J >= 1, got {positions.shape}")
        if self._num_joints is not None and positions.shape[1] != self._num_joints:
            raise ValueError(f"chunk: expected {self._num_joints} joints as in earlier chunks, "
                             f"got {positions.shape[1]}")
        if not np.all(np.isfinite(positions)):
            raise ValueError("chunk: holds NaN or inf")
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt: expected a finite step > 0 s, got {dt}")
        if not math.isfinite(observation_time_s):
            raise ValueError(
                f"observation_time_s: expected a finite time, got {observation_time_s}"
            )
        if self._newest_time is not None and observation_time_s < self._newest_time:
            raise ValueError(
                f"chunk out of order: observation time {observation_time_s:.6f} s is older than "
                f"the newest chunk's {self._newest_time:.6f} s"
            )
        positions.setflags(write=False)
        self._num_joints = positions.shape[1]
        self._newest_time = float(observation_time_s)
        usable = min(self.execute_steps, len(positions))
        self._pending = TimedChunk(positions, float(observation_time_s), float(dt), usable)

    def plan(self, now_s: float, n_points: int, min_lead_s: float = 0.0
             ) -> tuple[np.ndarray, np.ndarray] | None:
        """Up to `n_points` future steps of the current chunk: (times_from_now [n] s,
        positions [n, J]), or None when no chunk has an unexecuted step ahead (hold).

        Steps due within `min_lead_s` of now are left out: a trajectory that ends before the
        controller receives it is refused, and the trajectory sent before already commands them.
        """
        if n_points < 1:
            raise ValueError(f"n_points: expected >= 1, got {n_points}")
        if not (math.isfinite(min_lead_s) and min_lead_s >= 0):
            raise ValueError(f"min_lead_s: expected a finite time >= 0 s, got {min_lead_s}")
        if self._pending is not None:
            self._active = self._take_over(self._pending, now_s)
            self._pending = None
        chunk = self._active
        if chunk is None:
            return None
        ahead = np.flatnonzero(chunk.times()[: chunk.usable] > now_s + min_lead_s)[:n_points]
        if ahead.size == 0:
            return None
        return chunk.times()[ahead] - now_s, chunk.positions[ahead].copy()

    def _take_over(self, new: TimedChunk, now_s: float) -> TimedChunk:
        """The new chunk, faded in from what the active chunk commands, starting at now_s."""
        old = self._active
        if old is None or self.blend_steps == 0:
            return new
        times = new.times()
        first = int(np.searchsorted(times, now_s, side="right"))
        stop = min(first + self.blend_steps, len(times))
        if first >= stop:
            return new
        weights = (np.arange(first, stop) - first)[:, None] / self.blend_steps
        blended = np.array(new.positions)
        blended[first:stop] = (
            weights * new.positions[first:stop] + (1.0 - weights) * old.commanded(times[first:stop])
        )
        blended.setflags(write=False)
        return TimedChunk(blended, new.t0, new.dt, new.usable)
