"""`vam sim diagnose`: where a checkpoint fails on the simulated arm, reaching or finishing.

Every layout is rolled out in-process (no ROS, simulated time): the policy predicts a chunk
from its camera history, the instruction and the joint state; the arm follows the chunk on the
time grid the node and training use (step k at the observation time + k * action_dt,
interpolated between steps; each command is reached one control period later, as the scripted
expert's commands in the demonstrations are), and the policy re-plans every `replan_steps`
actions (the profile's; 0, which the node reads as "at every newer camera frame", is taken
as 1) with the profile's `noise_scale`. Each layout runs twice:

- alone: the policy from the start. Where its grip site is as long after its first chunk's
  observation as the scripted expert takes from the reset to the end of its approach (above the
  cube to lift it, beside it to push it), against where the expert's is then, is the *approach
  error*: along x (depth: the cubes' rows) and y (across the table). Timed on the policy's own
  clock, so a policy that starts late (the node waits until its camera history spans
  `history_frames`, 0.4 s) is not counted short for it. The same at the time the expert's
  fingers are down at the cube, about to close or push, is the *reach error*:
  a policy that approaches well but drifts on the way down has a small approach error and a
  large reach error. The cube whose starting place is nearest the grip site at the end of the
  approach is the one it *approached*: a policy that has not bound the instruction's colour to
  a cube goes to another one (an approach error of a row, ~11 cm in x), one that has but
  cannot place it precisely misses the named cube by a few cm. The cube it *touched* first is
  the first one it moved (more than 1 cm): another cube than the named one means it lost the
  named cube on the way even where it approached it, the named one in a failed rollout means
  it got there but grasped or pushed it badly, none that it never got there.
- handed over: the expert drives until the end of its approach, then the policy.

The report groups the layouts by task, and again by the row the named cube started in (its
depth x from the robot: a policy that places cubes imprecisely often misses one row more than
the others), and counts the rollouts a latched safety fault stopped (`--loop node`).

`compare_reports` sets two reports of the same layouts side by side (`vam sim compare`):
which layouts one solved and the other did not, and a sign test of those. Small changes to a
policy or its profile flip many layouts both ways (re-planning every 20 steps instead of 8:
11 won, 11 lost of 48), so a few more solved on 36 layouts is no evidence of a gain.

A policy that fails alone but succeeds handed over does not find the named cube; one that fails
both does not finish the task. Each layout can be rolled out under several noise draws (the
flow-matching decoder's start noise, and the future frames' noise): a policy that has not
learnt which cube the instruction names picks one by the noise, so one draw per layout says
little about its success rate.

The `ChunkFollower` above leaves out the node's timing, blending and safety filter; the
`NodeLoop` (`--loop node`, `sim/node_loop.py`) runs them on the sim's clock. `vam eval`
measures the ROS path itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.stats import binomtest
from tqdm import tqdm

from vam_policy.model.chunking import TimedChunk
from vam_policy.model.policy import VAMPolicy
from vam_policy.model.transforms import FrameHistory
from vam_policy.sim.arm import Command, Observation, SimArm
from vam_policy.sim.experts import make_expert
from vam_policy.sim.tasks import ROW_X, get_task

# Within this distance of the expert's grip site at the end of its approach, a lift still
# succeeds (measured with the expert aimed at wrongly placed cubes: 2 cm across the table).
REACH_TOLERANCE_M = 0.02
# A cube farther than this from where it started has been touched.
MOVED_M = 0.01
# Noise draw r of a layout seeds its chunks from seed + NOISE_DRAW_STRIDE * r.
NOISE_DRAW_STRIDE = 100_000


class Driver(Protocol):
    """Drives the arm for a policy: sees every state, commands once it has taken over.

    `fault`: why its safety filter stopped commanding for the rest of the rollout, or None.
    `started_s`: the stamp of the observation its first chunk was planned from, None before."""

    fault: str | None
    started_s: float | None

    def observe(self, observation: Observation) -> None: ...

    def command(self, observation: Observation) -> Command: ...


# Makes the driver of one rollout: (arm, instruction, seed of its noise) -> driver.
DriverFactory = Callable[[SimArm, str, int], Driver]


class ChunkFollower:
    """Drives the arm with `policy`'s chunks: a history of camera frames at the model's fps,
    a chunk every `replan_steps` actions, each followed on its time grid."""

    def __init__(self, policy: VAMPolicy, instruction: str, replan_steps: int,
                 seed: int, noise_scale: float = 1.0) -> None:
        if not 1 <= replan_steps <= policy.config.horizon:
            raise ValueError(f"replan_steps must be in [1, {policy.config.horizon}] (the "
                             f"chunk's horizon), got {replan_steps}")
        self._policy = policy
        self._instruction = instruction
        self._replan_s = replan_steps * policy.config.action_dt
        self._seed = seed
        self._noise_scale = noise_scale
        self._history = FrameHistory()
        self._chunk: TimedChunk | None = None
        self._chunks = 0
        self.fault: str | None = None  # no safety filter here
        self.started_s: float | None = None

    def observe(self, observation: Observation) -> None:
        """Add the camera frame. The first one also stands for the still scene before it, as
        training pads the history of an episode's first anchors."""
        cfg = self._policy.config
        if self._history.newest_stamp is None:
            self._history.push(observation.time - (cfg.history_frames - 1) / cfg.fps,
                               observation.rgb)
        if observation.time > self._history.newest_stamp:
            self._history.push(observation.time, observation.rgb)

    def command(self, observation: Observation) -> Command:
        """The command for the control period starting at `observation` (observed already):
        the current chunk at this time, re-planned first when `replan_steps` have passed."""
        t = observation.time
        if self._chunk is None or t - self._chunk.t0 >= self._replan_s - 1e-6:
            cfg = self._policy.config
            frames = self._history.sample(t, cfg.history_frames, cfg.fps)
            state = np.r_[observation.joint_positions, observation.gripper_opening]
            chunk = self._policy.predict(frames, state, self._instruction,
                                         seed=self._seed * 1000 + self._chunks,
                                         noise_scale=self._noise_scale)
            self._chunk = TimedChunk(chunk, t, cfg.action_dt, len(chunk))
            self._chunks += 1
            if self.started_s is None:
                self.started_s = t
        target = self._chunk.commanded(np.array([t]))[0]  # [J]
        return Command(joint_targets=target[:-1], gripper=float(np.clip(target[-1], 0.0, 1.0)))


@dataclass(frozen=True)
class EpisodeDiagnosis:
    """One layout of one task under one noise draw, rolled out alone and handed over."""

    task: str
    seed: int
    noise_draw: int
    success: bool
    success_handed_over: bool
    approach_s: float
    approach_error_m: tuple[float, float]  # policy - expert grip site at approach_s: x, y
    reach_s: float
    reach_error_m: tuple[float, float]  # policy - expert grip site at reach_s: x, y
    approached_cube: str  # colour of the cube nearest the policy's grip site at approach_s
    cube_xy: tuple[float, float]  # where the named cube started: world x (its row), y
    fault: str | None = None  # the safety fault that stopped the policy alone, if one did
    touched_cube: str | None = None  # colour of the first cube the policy alone moved, if any

    @property
    def approached_named_cube(self) -> bool:
        """Whether the policy alone went to the cube its instruction names."""
        return self.approached_cube == get_task(self.task).cube

    @property
    def row(self) -> str:
        """The row the named cube started in, by its x (depth from the robot)."""
        nearest = min(ROW_X, key=lambda x: abs(x - self.cube_xy[0]))
        return f"row x {nearest:+.3f} m"


MARKS = ("approach", "reach")  # the moments of the expert's plan the errors are taken at


def grip_xy(arm: SimArm) -> np.ndarray:
    """The grip site's world x, y (m)."""
    return arm.grip_position()[:2]


def nearest_cube(cubes: dict[str, np.ndarray], xy: np.ndarray) -> str:
    """The colour of the cube in `cubes` (colour -> x, y) nearest to `xy`."""
    return min(cubes, key=lambda color: float(np.linalg.norm(cubes[color] - xy)))


def moved_cube(starts: dict[str, np.ndarray], now: dict[str, np.ndarray]) -> str | None:
    """The colour of the cube farthest from its start in `starts` at positions `now` (both
    colour -> x, y, z), if it is more than `MOVED_M` away; else None."""
    distance = {color: float(np.linalg.norm(now[color] - start))
                for color, start in starts.items()}
    color = max(distance, key=distance.__getitem__)
    return color if distance[color] > MOVED_M else None


def note_grip(notes: dict[str, np.ndarray], times: dict[str, float], arm: SimArm,
             now: float, start_s: float | None = 0.0) -> None:
    """Note the grip site's x, y under each mark whose time (after `start_s`; None: not
    started yet) has come and has no note yet."""
    if start_s is None:
        return
    for mark, mark_s in times.items():
        if mark not in notes and now >= start_s + mark_s - 1e-9:
            notes[mark] = grip_xy(arm)


def diagnose_episode(arm: SimArm, drive: DriverFactory, task: str, seed: int,
                     noise_draw: int) -> EpisodeDiagnosis:
    """Roll `task` at `seed` out alone and handed over (module docstring)."""
    # The expert alone, to the end of its reach: where the policy should be by then.
    observation = arm.reset(task, seed)
    starts = arm.cube_positions()
    cubes = {color: xyz[:2] for color, xyz in starts.items()}  # where they start
    expert = make_expert(arm)
    times = {mark: getattr(expert, f"{mark}_s") for mark in MARKS}  # the expert's plan
    expert_at: dict[str, np.ndarray] = {}
    while True:
        note_grip(expert_at, times, arm, observation.time)
        if len(expert_at) == len(times):
            break
        observation = arm.apply(expert.act(observation))

    results = []
    for handover_s in (0.0, expert.approach_s):
        observation = arm.reset(task, seed)
        expert = make_expert(arm)
        named = arm.cube_positions()[arm.task.cube]
        follower = drive(arm, arm.task.instruction, seed + NOISE_DRAW_STRIDE * noise_draw)
        policy_at: dict[str, np.ndarray] = {}
        touched = None
        while not arm.truncated and not arm.success():
            follower.observe(observation)
            note_grip(policy_at, times, arm, observation.time, follower.started_s)
            touched = touched or moved_cube(starts, arm.cube_positions())
            if observation.time < handover_s - 1e-9:
                observation = arm.apply(expert.act(observation))
            else:
                observation = arm.apply(follower.command(observation))
        for mark in times:  # solved before the expert would have got there
            policy_at.setdefault(mark, grip_xy(arm))
        touched = touched or moved_cube(starts, arm.cube_positions())  # by the last command
        results.append((arm.success(), policy_at, follower.fault, touched))
    (alone, policy_at, fault, touched), (handed_over, _, _, _) = results
    approach, reach = (policy_at[mark] - expert_at[mark] for mark in MARKS)
    return EpisodeDiagnosis(task, seed, noise_draw, alone, handed_over,
                            expert.approach_s, (float(approach[0]), float(approach[1])),
                            expert.reach_s, (float(reach[0]), float(reach[1])),
                            nearest_cube(cubes, policy_at["approach"]),
                            (float(named[0]), float(named[1])), fault, touched)


def summarize(episodes: Sequence[EpisodeDiagnosis], by: str = "task") -> list[dict[str, Any]]:
    """Per group (`by` "task" or "row" of the named cube, in sorted order) and over all:
    success alone and handed over, the share of approaches to the named cube, of rollouts a
    safety fault stopped, of those that touched the named cube first and of those that touched
    none, and for the approach and the reach the mean absolute error along x
    and y and the share within tolerance."""
    if by not in ("task", "row"):
        raise ValueError(f"by must be 'task' or 'row', got {by!r}")
    groups: dict[str, list[EpisodeDiagnosis]] = {}
    for episode in episodes:
        groups.setdefault(getattr(episode, by), []).append(episode)
    groups = dict(sorted(groups.items()))
    if len(groups) > 1:
        groups["all"] = list(episodes)
    rows = []
    for name, group in groups.items():
        row: dict[str, Any] = {
            by: name,
            "rollouts": len(group),
            "success": float(np.mean([e.success for e in group])),
            "success_handed_over": float(np.mean([e.success_handed_over for e in group])),
            "approached_named_cube": float(np.mean([e.approached_named_cube for e in group])),
            "safety_faults": float(np.mean([e.fault is not None for e in group])),
            "touched_named_cube_first": float(np.mean([e.touched_cube == get_task(e.task).cube
                                                       for e in group])),
            "touched_no_cube": float(np.mean([e.touched_cube is None for e in group])),
        }
        for mark in MARKS:
            errors = np.abs(np.array([getattr(e, f"{mark}_error_m") for e in group]))  # [N, 2]
            row[f"{mark}_error_x_m"] = float(errors[:, 0].mean())
            row[f"{mark}_error_y_m"] = float(errors[:, 1].mean())
            row[f"{mark}_within_tolerance"] = float(np.mean(errors.max(axis=1)
                                                            <= REACH_TOLERANCE_M))
        rows.append(row)
    return rows


def follow_chunks(policy: VAMPolicy, replan_steps: int,
                  noise_scale: float = 1.0) -> DriverFactory:
    """Rollouts driven by a `ChunkFollower`."""
    return lambda arm, instruction, seed: ChunkFollower(policy, instruction, replan_steps, seed,
                                                        noise_scale)


def diagnose(arm: SimArm, drive: DriverFactory, tasks: Sequence[str], episodes: int,
             first_seed: int, noise_draws: int = 1,
             progress: bool = True) -> list[EpisodeDiagnosis]:
    """`episodes` layouts of each task (seeds first_seed, first_seed + 1, ...), each under
    `noise_draws` noise draws, driven by the drivers `drive` makes."""
    for task in tasks:
        get_task(task)  # a typo fails before any rollout
    if noise_draws < 1:
        raise ValueError(f"noise_draws must be at least 1, got {noise_draws}")
    runs = [(task, first_seed + k, draw) for task in tasks for k in range(episodes)
            for draw in range(noise_draws)]
    return [diagnose_episode(arm, drive, task, seed, draw)
            for task, seed, draw in tqdm(runs, desc="diagnose", unit="rollout",
                                         disable=not progress)]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A summary as a Markdown table (errors in cm, x / y); its first column is the grouping."""
    by = next(iter(rows[0])) if rows else "task"
    lines = [f"| {by} | rollouts | success | success, expert approach first "
             "| approached the named cube | touched the named cube first | touched none "
             "| safety faults | approach error (cm) | approaches within 2 cm | reach error (cm) "
             "| reaches within 2 cm |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row[by], str(row["rollouts"]), f"{row['success']:.0%}",
                 f"{row['success_handed_over']:.0%}", f"{row['approached_named_cube']:.0%}",
                 f"{row['touched_named_cube_first']:.0%}", f"{row['touched_no_cube']:.0%}",
                 f"{row['safety_faults']:.0%}"]
        for mark in MARKS:
            cells += [f"{100 * row[f'{mark}_error_x_m']:.1f} / "
                      f"{100 * row[f'{mark}_error_y_m']:.1f}",
                      f"{row[f'{mark}_within_tolerance']:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_tables(rows: Sequence[dict[str, Any]], by_row: Sequence[dict[str, Any]]) -> str:
    """The summaries by task and by row (`summarize`) as Markdown, one after the other."""
    return (f"{markdown_table(rows)}\n"
            f"By the row the named cube started in (x: depth from the robot):\n\n"
            f"{markdown_table(by_row)}")


def write_report(out: Path, checkpoint: str, run: dict[str, Any],
                 episodes: Sequence[EpisodeDiagnosis], rows: Sequence[dict[str, Any]],
                 by_row: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    """`diagnosis.json` (how it was `run`, every layout and the summaries `rows` and `by_row`)
    and `diagnosis.md` in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": checkpoint, **run,
              "reach_tolerance_m": REACH_TOLERANCE_M, "summary": rows, "summary_by_row": by_row,
              "episodes": [asdict(e) for e in episodes]}
    json_path, md_path = out / "diagnosis.json", out / "diagnosis.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(f"# Diagnosis of `{checkpoint}`\n\n{markdown_tables(rows, by_row)}")
    return json_path, md_path


def compare_reports(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Two `diagnosis.json` reports paired by layout (task, seed, noise draw): how many each
    solved, the layouts `after` won and lost against `before` (sorted), and the two-sided
    sign test's p-value of those (1.0 when none differ). Only layouts in both count."""
    def outcomes(report: dict[str, Any]) -> dict[tuple[str, int, int], bool]:
        return {(e["task"], e["seed"], e["noise_draw"]): e["success"]
                for e in report["episodes"]}

    old, new = outcomes(before), outcomes(after)
    shared = sorted(old.keys() & new.keys())
    if not shared:
        raise ValueError("the two reports share no layout (task, seed, noise draw)")
    won = [key for key in shared if new[key] and not old[key]]
    lost = [key for key in shared if old[key] and not new[key]]
    flips = len(won) + len(lost)
    return {"layouts": len(shared),
            "solved_before": sum(old[key] for key in shared),
            "solved_after": sum(new[key] for key in shared),
            "won": won, "lost": lost,
            "sign_test_p": binomtest(len(won), flips).pvalue if flips else 1.0}


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """`compare_reports`' result as a few lines of Markdown."""
    def layouts(keys: list[tuple[str, int, int]]) -> str:
        return ", ".join(f"{task} {seed}" + (f" (draw {draw})" if draw else "")
                         for task, seed, draw in keys) or "none"

    c = comparison
    return (f"| layouts | solved before | solved after | won | lost | sign test p |\n"
            f"|---|---|---|---|---|---|\n"
            f"| {c['layouts']} | {c['solved_before']} | {c['solved_after']} | {len(c['won'])} "
            f"| {len(c['lost'])} | {c['sign_test_p']:.2f} |\n\n"
            f"Won: {layouts(c['won'])}\n\nLost: {layouts(c['lost'])}\n")
