"""Scripted demonstrations written as rosbag2, as if recorded from the live sim node.

    vam sim record --tasks lift_red,push_blue_left --episodes-per-task 10 --out demos/sim

The experts run in the simulator directly (no ROS, faster than real time), and each episode is
written with the `rosbags` package as one bag holding exactly what `ros2 bag record` would get
from `vam_sim_node` and the policy node's inputs: one Image (rgb8) per camera, the JointState of
the arm joints plus `robot0_gripper`, the expert's commands as JointTrajectory on the trajectory
topic and the instruction as std_msgs/String on the policy node's instruction topic, plus an
`instruction.txt`. Topics, rates and stamps follow the sim node's rules (`vam_sim_node`
section of the profile): every physics state is stamped with its simulated time, a timer at
joint_states_rate_hz / camera_rate_hz sends the newest state once, and each command is a
one-point trajectory stamped when it was decided, reaching its target one control period later
(what the sim node executes). So `vam dataset build` reads these bags like real recordings, and
a policy trained on them meets the same signals in the closed loop. Only episodes the expert
solved are kept. No rclpy here.

With a `PolicyRollIn` (`vam sim record --policy CKPT`, the idea of DAgger, Ross et al. 2011)
a trained policy drives the arm for the first part of each reach and the expert then takes
over, while the bag holds the expert's commands throughout: the demonstrations visit the states
the policy's own errors lead to, each labelled with where the expert would have the arm go.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from vam_policy.data.episodes import INSTRUCTION_FILE, RecordingProfile
from vam_policy.ros.sim_parameters import SimNodeSettings, load_sim_settings
from vam_policy.sim.arm import SimArm
from vam_policy.sim.disturbance import ReachDisturbance, approach_offset
from vam_policy.sim.experts import make_expert
from vam_policy.sim.tasks import episode_name, get_task
from vam_policy.sim.trajectory import controlled_joints, controller_state

if TYPE_CHECKING:
    from vam_policy.sim.diagnose import DriverFactory

Storage = Literal["mcap", "sqlite3"]
STORAGES: tuple[str, ...] = ("mcap", "sqlite3")
SUMMARY_FILE = "recording.json"
_PARTIAL = ".partial-"
_PLUGINS = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
_TYPESTORE = get_typestore(Stores.ROS2_KILTED)
_T = _TYPESTORE.types
_IMAGE, _JOINTS = "sensor_msgs/msg/Image", "sensor_msgs/msg/JointState"
_TRAJECTORY, _STRING = "trajectory_msgs/msg/JointTrajectory", "std_msgs/msg/String"
_DISTURBANCE_STREAM = 7  # the disturbance's random stream, apart from the layout's
_APPROACH_STREAM = 8  # the approach offset's
_HANDOVER_STREAM = 9  # the policy roll-in's handover time


@dataclass(frozen=True)
class RecordingTopics:
    """What a recording holds: the sim node's topics and rates, the policy's instruction topic."""

    camera_topics: tuple[str, ...]
    joint_states_topic: str
    trajectory_topic: str
    instruction_topic: str
    camera_rate_hz: float
    joint_states_rate_hz: float
    cameras: tuple[str, ...]  # frame_id of each camera topic's images

    @classmethod
    def from_profile(cls, path: str | Path) -> tuple[RecordingTopics, SimNodeSettings]:
        """Topics and sim settings of a profile whose two node sections agree.

        Raises ValueError naming each disagreement: such bags could not be built into a dataset
        with the same profile, or the policy would listen where the sim does not publish.
        """
        sim = load_sim_settings(path)
        policy = RecordingProfile.load(path)
        joints = controlled_joints(SimArm.joint_names)
        problems = [
            f"{what}: vam_sim_node has {mine!r}, vam_policy_node {theirs!r}"
            for what, mine, theirs in (
                ("camera topics", sim.camera_topics, policy.camera_topics),
                ("joint states topic", sim.joint_states_topic, policy.joint_states_topic),
                ("trajectory topic", sim.trajectory_topic, policy.trajectory_topic),
                ("joint names", joints, policy.joint_names),
            )
            if mine != theirs
        ]
        if problems:
            raise ValueError(f"profile {path}: the sim and policy sections disagree: "
                             + "; ".join(problems))
        topics = cls(sim.camera_topics, sim.joint_states_topic, sim.trajectory_topic,
                     policy.instruction_topic, sim.camera_rate_hz, sim.joint_states_rate_hz,
                     sim.cameras)
        return topics, sim


DEFAULT_REACH_SHARE = (0.25, 1.0)


def check_reach_share(share: tuple[float, float]) -> None:
    """ValueError unless `share` is a range (low, high) with 0 <= low <= high <= 1."""
    low, high = share
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"reach_share (--policy-share) must be 0 <= low <= high <= 1, got "
                         f"{share}")


@dataclass(frozen=True)
class PolicyRollIn:
    """A policy that drives the arm from the reset until a handover time, then the expert.

    Attributes:
        drive: makes the policy's driver of one episode (arm, instruction, seed).
        source: where the policy came from (its checkpoint), for the recording's summary.
        reach_share: the handover time is drawn (from the episode seed) uniformly from this
            range of shares of the expert's reach time (the end of its descent to the cube):
            from early in the approach, where a policy's errors begin, to the fingers at the
            cube.
    """

    drive: DriverFactory
    source: str
    reach_share: tuple[float, float] = DEFAULT_REACH_SHARE

    def __post_init__(self) -> None:
        check_reach_share(self.reach_share)

    def handover_s(self, seed: int, reach_s: float) -> float:
        """Episode `seed`'s handover time for an expert whose reach ends at `reach_s`."""
        rng = np.random.default_rng([seed, _HANDOVER_STREAM])
        return float(rng.uniform(*self.reach_share) * reach_s)


@dataclass(frozen=True)
class RecordedEpisode:
    """One expert episode: how it ended and where its bag is ("" when it was dropped).

    `handover_s`: when the expert took the arm over from a `PolicyRollIn`'s policy (0: it
    drove from the start)."""

    task: str
    seed: int
    success: bool
    steps: int
    sim_time_s: float
    wall_time_s: float
    bag: str
    handover_s: float = 0.0


def sent_by_timer(t: float, period_s: float, rate_hz: float) -> bool:
    """Whether a timer at `rate_hz` (ticking at k / rate_hz) sends the state that was newest
    from `t` until `t + period_s`: it does when a tick falls in that interval."""
    tick = math.ceil(t * rate_hz - 1e-9) / rate_hz
    return tick < t + period_s - 1e-9


def record_episode(arm: SimArm, task: str, seed: int, path: Path, topics: RecordingTopics,
                   storage: Storage = "mcap", settle_s: float = 0.3,
                   disturbance: ReachDisturbance | None = None,
                   approach_offset_m: float = 0.0,
                   roll_in: PolicyRollIn | None = None) -> RecordedEpisode:
    """Run `task`'s expert from `seed` and write every message to a new bag at `path`.

    Ends `settle_s` after the expert's plan or at the episode time limit, like
    `run_expert_episode`; success is judged at the end. The bag is written either way. With a
    `disturbance` (drawn from `seed`), the arm executes the expert's targets plus its offsets,
    and the bag holds the expert's targets. With `approach_offset_m` > 0 the expert's approach
    ends at a point drawn (from `seed`) within that distance of its usual one. With a
    `roll_in`, its policy drives the arm (it sees every state) until the handover time and the
    expert from then on; the bag holds the expert's commands from the start.
    """
    wall_start = time.monotonic()
    observation = arm.reset(task, seed)
    offset = approach_offset(np.random.default_rng([seed, _APPROACH_STREAM]), approach_offset_m)
    expert = make_expert(arm, offset)
    driver = roll_in.drive(arm, arm.task.instruction, seed) if roll_in is not None else None
    handover_s = roll_in.handover_s(seed, expert.reach_s) if roll_in is not None else 0.0
    period = 1.0 / arm.config.control_hz
    joints = controlled_joints(arm.joint_names)
    start_ns = time.time_ns()
    previous_gripper: float | None = None
    steps = 0
    offsets = np.zeros((math.ceil(arm.config.horizon_s / period) + 1, len(arm.joint_names)))
    if disturbance is not None:
        offsets = disturbance.offsets(np.random.default_rng([seed, _DISTURBANCE_STREAM]),
                                      len(offsets), len(arm.joint_names), period,
                                      expert.reach_s)
    with Writer(path, version=9, storage_plugin=_PLUGINS[storage]) as writer:
        connections = {
            topic: writer.add_connection(topic, msgtype, typestore=_TYPESTORE)
            for topic, msgtype in ((topics.instruction_topic, _STRING),
                                   (topics.joint_states_topic, _JOINTS),
                                   *((topic, _IMAGE) for topic in topics.camera_topics),
                                   (topics.trajectory_topic, _TRAJECTORY))
        }

        def write(topic: str, stamp_ns: int, msg: Any) -> None:
            data = _TYPESTORE.serialize_cdr(msg, msg.__msgtype__)
            writer.write(connections[topic], stamp_ns, data)

        write(topics.instruction_topic, start_ns, _T[_STRING](data=arm.task.instruction))
        while True:
            stamp = start_ns + round(observation.time * 1e9)
            if sent_by_timer(observation.time, period, topics.joint_states_rate_hz):
                positions, velocities = controller_state(
                    observation.joint_positions, observation.joint_velocities,
                    observation.gripper_opening, previous_gripper, period)
                write(topics.joint_states_topic, stamp, _T[_JOINTS](
                    header=_header(stamp), name=list(joints), position=positions,
                    velocity=velocities, effort=np.zeros(0)))
            if sent_by_timer(observation.time, period, topics.camera_rate_hz):
                for topic, camera, image in zip(topics.camera_topics, topics.cameras,
                                                observation.images, strict=True):
                    write(topic, stamp, _image(image, stamp, camera))
            if observation.time >= expert.duration_s + settle_s or arm.truncated:
                break
            command = expert.act(observation)
            write(topics.trajectory_topic, stamp, _trajectory(
                joints, [*command.joint_targets, command.gripper], stamp, period))
            if driver is not None:
                driver.observe(observation)
                if observation.time < handover_s - 1e-9:
                    command = driver.command(observation)
            previous_gripper = observation.gripper_opening
            observation = arm.step(command.joint_targets + offsets[steps], command.gripper)
            steps += 1
    return RecordedEpisode(arm.task.name, seed, arm.success(), steps, observation.time,
                           time.monotonic() - wall_start, str(path), handover_s)


def record_demonstrations(
    profile: str | Path,
    tasks: Sequence[str],
    episodes_per_task: int,
    out: str | Path,
    *,
    seed: int = 0,
    storage: Storage = "mcap",
    disturbance_rad: float = 0.0,
    approach_offset_m: float = 0.0,
    roll_in: PolicyRollIn | None = None,
    log: Callable[[str], None] = print,
) -> list[RecordedEpisode]:
    """Record `episodes_per_task` expert episodes of each task (seeds seed, seed+1, ...).

    Writes `<out>/<task>_<seed>/` bags of the solved episodes only, and `<out>/recording.json`
    listing every episode. Refuses to overwrite an existing bag. `disturbance_rad` > 0 disturbs
    each reach of the cube by a `ReachDisturbance` of that scale; `approach_offset_m` > 0 ends
    each approach up to that far off its usual point; a `roll_in` lets its policy drive the
    first part of each reach (`record_episode`).
    """
    topics, settings = RecordingTopics.from_profile(profile)
    for task in tasks:
        get_task(task)  # a typo fails before any episode runs
    if not approach_offset_m >= 0:
        raise ValueError(f"approach_offset_m must be >= 0, got {approach_offset_m}")
    if episodes_per_task < 1 or storage not in STORAGES or not tasks:
        raise ValueError(f"need tasks, episodes_per_task >= 1 and a storage in {STORAGES}, "
                         f"got {list(tasks)}, {episodes_per_task}, {storage!r}")
    disturbance = ReachDisturbance(disturbance_rad) if disturbance_rad else None
    out = Path(out)
    planned = [(task, seed + i) for task in tasks for i in range(episodes_per_task)]
    existing = [str(out / name) for name in (episode_name(*p) for p in planned)
                if (out / name).exists()]
    if existing:
        raise ValueError(f"refusing to overwrite recordings: {', '.join(existing)}")
    out.mkdir(parents=True, exist_ok=True)
    results: list[RecordedEpisode] = []
    # This run's own scratch folder, so recorders writing to one `out` side by side don't clash.
    scratch = Path(tempfile.mkdtemp(prefix=_PARTIAL, dir=out))
    try:
        with SimArm(settings.arm_config()) as arm:
            for task, episode_seed in planned:
                final = out / episode_name(task, episode_seed)
                # Written elsewhere under its final name (the storage file is named after the
                # folder), then moved in whole: a crash leaves no half bag among the good ones.
                partial = scratch / final.name
                result = record_episode(arm, task, episode_seed, partial, topics, storage,
                                        disturbance=disturbance,
                                        approach_offset_m=approach_offset_m, roll_in=roll_in)
                if result.success:
                    (partial / INSTRUCTION_FILE).write_text(arm.task.instruction + "\n",
                                                            encoding="utf-8")
                    partial.rename(final)
                    result = RecordedEpisode(**{**asdict(result), "bag": str(final)})
                else:
                    shutil.rmtree(partial)
                    result = RecordedEpisode(**{**asdict(result), "bag": ""})
                results.append(result)
                handover = f", expert from {result.handover_s:.1f} s" if roll_in else ""
                log(f"{task} seed {episode_seed}: {'solved' if result.success else 'FAILED'} in "
                    f"{result.sim_time_s:.1f} s sim{handover}, {result.wall_time_s:.1f} s wall"
                    + (f" -> {final}" if result.success else " (dropped)"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    kept = sum(r.success for r in results)
    summary = {"profile": str(profile), "storage": storage, "disturbance_rad": disturbance_rad,
               "approach_offset_m": approach_offset_m,
               "policy": roll_in.source if roll_in else None,
               "policy_reach_share": list(roll_in.reach_share) if roll_in else None,
               "kept": kept, "episodes": [asdict(r) for r in results]}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log(f"kept {kept} of {len(results)} episodes (only solved ones) in {out}")
    return results


def _header(stamp_ns: int, frame_id: str = "") -> Any:
    return _T["std_msgs/msg/Header"](
        stamp=_T["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000,
                                              nanosec=stamp_ns % 1_000_000_000),
        frame_id=frame_id)


def _image(rgb: np.ndarray, stamp_ns: int, frame_id: str) -> Any:
    height, width = rgb.shape[:2]
    return _T[_IMAGE](header=_header(stamp_ns, frame_id), height=height, width=width,
                      encoding="rgb8", is_bigendian=0, step=width * 3,
                      data=np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1))


def _trajectory(joints: Sequence[str], targets: Sequence[float], stamp_ns: int,
                period_s: float) -> Any:
    """One point: the targets, reached one control period after the stamp."""
    nanoseconds = round(period_s * 1e9)
    point = _T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.asarray(targets, dtype=np.float64), velocities=np.zeros(0),
        accelerations=np.zeros(0), effort=np.zeros(0),
        time_from_start=_T["builtin_interfaces/msg/Duration"](
            sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000))
    return _T[_TRAJECTORY](header=_header(stamp_ns), joint_names=list(joints), points=[point])
