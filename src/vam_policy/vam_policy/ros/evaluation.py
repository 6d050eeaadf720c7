"""Closed-loop evaluation: a checkpoint drives the simulated arm over ROS 2, episode by episode.

    vam eval --checkpoint runs/idm/policy --episodes 10 --out results/sim

`run_evaluation` starts `vam_sim_node` and `vam_policy_node` as separate processes (the same
profile for both, on a private loopback-only ROS domain: the loop publishes joint states and
arm commands, which must never reach a robot's controllers) and, for each seeded episode:
pauses the policy, resets the sim (`~/reset`), hands the task's instruction to the policy
(`~/set_instruction`), resumes it (`~/resume`), waits until the sim's EpisodeStatus says done
(solved or out of time), and pauses the policy again. The nodes are always stopped at the end
(SIGINT, then SIGKILL). Results go to `results.json` and `results.md` (success rate per task),
the nodes' output to `logs/`. Each episode also records the policy node's action chunks (count,
mean inference time, mean delay from observation to chunk): on a shared CPU these differ from a
benchmark's, and `vam sim diagnose --loop node --latency-s` can replay the inference time. With
`record_frames` N, the camera frames this process received during the first N episodes go to
`frames/<task>_<seed>.npz` (`frames` [T, H, W, 3] uint8 and `stamps` in s), to watch a rollout.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import rclpy
from rclpy.client import Client
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from vam_msgs.msg import ActionChunk, EpisodeStatus, PolicyStatus
from vam_msgs.srv import ResetEpisode, SetInstruction
from vam_policy.ros.image_conversion import image_to_rgb
from vam_policy.ros.isolation import isolate_this_process, local_ros_env
from vam_policy.ros.messages import stamp_ns
from vam_policy.ros.parameters import (
    NODE_NAME,
    load_parameters_file,
    resolve_topic,
    settings_from_parameters,
)
from vam_policy.ros.sim_parameters import SIM_NODE_NAME, load_sim_settings
from vam_policy.sim.tasks import TASKS, get_task

# Domains the loop runs on: above those robots and this workspace's tests usually take (0-100)
# and below Fast DDS's port limit (~232).
_DOMAIN_RANGE = (150, 199)
_SERVICE_TIMEOUT_S = 30.0
_STOP_GRACE_S = 10.0
_MIN_REAL_TIME_FACTOR = 0.25  # slower than this, an episode is given up as stuck
_PAUSED = 2  # vam_msgs/PolicyStatus STATE_PAUSED


@dataclass(frozen=True)
class PolicyTopics:
    """Where the policy node of a profile publishes its status and its action chunks."""

    status: str
    action_chunk: str


def policy_topics(profile: str | Path) -> PolicyTopics:
    """The profile's status_topic and action_chunk_topic (or their defaults), resolved as the
    node, which runs in the root namespace, resolves them (`~/x` is `/vam_policy_node/x`)."""
    settings = settings_from_parameters(load_parameters_file(profile))
    return PolicyTopics(resolve_topic(settings.status_topic),
                        resolve_topic(settings.action_chunk_topic))


class EvalError(RuntimeError):
    """The loop could not run (a node failed to start, died or did not answer)."""


@dataclass(frozen=True)
class EvalOptions:
    """What `vam eval` runs; checked on construction (ValueError)."""

    checkpoint: Path
    out: Path
    profile: Path  # with vam_sim_node and vam_policy_node sections
    episodes: int  # per task, seeds seed, seed+1, ...
    seed: int
    tasks: tuple[str, ...] | None = None  # None: every sim task
    max_time_s: float | None = None  # None: the profile's episode_time_limit_s
    device: str | None = None  # None: the profile's
    startup_timeout_s: float = 300.0
    record_frames: int = 0  # episodes (the first ones) whose camera frames are saved

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks or sorted(TASKS)))
        for task in self.tasks or ():
            get_task(task)
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.record_frames < 0:
            raise ValueError(f"record_frames must be >= 0, got {self.record_frames}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ValueError(f"max_time_s must be > 0, got {self.max_time_s}")
        if not Path(self.checkpoint).is_dir():
            raise ValueError(f"checkpoint {self.checkpoint} is not a folder")
        load_sim_settings(self.profile)  # a bad profile fails here, not in a child process

    @property
    def time_limit_s(self) -> float:
        return self.max_time_s or load_sim_settings(self.profile).episode_time_limit_s


@dataclass(frozen=True)
class EpisodeOutcome:
    """One closed-loop episode as the sim reported it when it was done."""

    task: str
    seed: int
    instruction: str
    success: bool
    sim_time_s: float
    wall_time_s: float
    trajectories_accepted: int
    trajectories_rejected: int
    joint_travel_rad: float
    real_time_factor: float
    chunks: int  # action chunks the policy node published while the episode ran
    inference_latency_s: float | None  # their mean inference time (wall s; None: no chunk)
    chunk_delay_s: float | None  # their mean time from observation stamp to chunk ready (s)


@dataclass(frozen=True)
class TaskSummary:
    """Success rate and mean episode time (simulated s until done) of one task, or all."""

    task: str
    episodes: int
    successes: int
    success_rate: float
    mean_time_s: float


def summarize(outcomes: Sequence[EpisodeOutcome]) -> list[TaskSummary]:
    """One row per task in first-seen order, then "all"."""
    groups: dict[str, list[EpisodeOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault(outcome.task, []).append(outcome)
    groups["all"] = list(outcomes)
    rows = []
    for task, group in groups.items():
        successes = sum(o.success for o in group)
        rows.append(TaskSummary(task, len(group), successes, successes / max(len(group), 1),
                                sum(o.sim_time_s for o in group) / max(len(group), 1)))
    return rows


def markdown_table(rows: Sequence[TaskSummary]) -> str:
    lines = ["| task | episodes | successes | success rate | mean time (s) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.task} | {r.episodes} | {r.successes} | {100 * r.success_rate:.0f}% | "
              f"{r.mean_time_s:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    stream: IO[bytes]


def run_evaluation(options: EvalOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every episode and write the results; returns what results.json holds."""
    out = Path(options.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    domain = random.randint(*_DOMAIN_RANGE)
    env = local_ros_env(domain_id=domain)
    isolate_this_process(domain_id=domain)
    profile = str(Path(options.profile).resolve())
    tasks = options.tasks or ()
    policy_args = [f"checkpoint:={Path(options.checkpoint).resolve()}", "start_paused:=true"]
    if options.device:
        policy_args.append(f"device:={options.device}")
    sim_args = [f"episode_time_limit_s:={float(options.time_limit_s)}", f"task:={tasks[0]}",
                f"seed:={options.seed}"]
    started = time.monotonic()
    children: list[_Child] = []
    context = Context()
    try:
        children.append(_start("vam_sim_node", "vam_policy.ros.sim_node", profile, sim_args,
                               env, logs))
        children.append(_start("vam_policy_node", "vam_policy.ros.node", profile, policy_args,
                               env, logs))
        rclpy.init(context=context, domain_id=domain)
        # The rollout video shows the first camera (the sim profile's view of the whole scene).
        camera_topic = load_sim_settings(options.profile).camera_topics[0]
        loop = _Loop(context, children, camera_topic, policy_topics(options.profile))
        try:
            loop.wait_until_ready(options.startup_timeout_s)
            log(f"vam eval: nodes up after {time.monotonic() - started:.1f} s (ROS domain "
                f"{domain}); {len(tasks)} task(s) x {options.episodes} episode(s)")
            outcomes = []
            for task in tasks:
                for seed in range(options.seed, options.seed + options.episodes):
                    record = len(outcomes) < options.record_frames
                    outcome = loop.episode(task, seed, options.time_limit_s, record)
                    if record:
                        loop.save_frames(out / "frames" / f"{task}_{seed:04d}.npz")
                    outcomes.append(outcome)
                    log(f"{task} seed {seed}: {'solved' if outcome.success else 'failed'} "
                        f"in {outcome.sim_time_s:.1f} s sim ({outcome.wall_time_s:.1f} s "
                        f"wall, {outcome.trajectories_accepted} trajectories, "
                        f"{_chunk_timing(outcome)})")
        finally:
            loop.close()
    finally:
        exit_codes = {child.name: _stop(child) for child in children}
        if context.ok():
            rclpy.shutdown(context=context)
    rows = summarize(outcomes)
    results = {
        "checkpoint": str(options.checkpoint), "profile": str(options.profile),
        "tasks": list(tasks), "episodes_per_task": options.episodes, "seed": options.seed,
        "max_time_s": options.time_limit_s, "wall_time_s": time.monotonic() - started,
        "summary": [asdict(row) for row in rows], "policy_timing": policy_timing(outcomes),
        "episodes": [asdict(outcome) for outcome in outcomes],
        "nodes": {child.name: {"pid": child.process.pid, "exit_code": exit_codes[child.name],
                               "log": str(child.log)} for child in children},
    }
    table = markdown_table(rows)
    timing = results["policy_timing"]
    timing_line = "The policy node published no action chunk." if not timing["chunks"] else (
        f"The policy node published {timing['chunks']} action chunks: inference took "
        f"{timing['inference_latency_s']:.3f} s on average, and a chunk was ready "
        f"{timing['chunk_delay_s']:.3f} s after its observation's stamp.")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(
        f"# Closed-loop evaluation of `{options.checkpoint}`\n\n{table}\nSeeds {options.seed}.."
        f"{options.seed + options.episodes - 1} per task; time: simulated seconds until the "
        f"task was solved or the {options.time_limit_s:g} s limit. {timing_line}\n",
        encoding="utf-8")
    log(table)
    return results


def _start(name: str, module: str, profile: str, overrides: Sequence[str],
           env: dict[str, str], logs: Path) -> _Child:
    """Start a node in the evaluation's process group (a kill of `vam eval` reaches it)."""
    path = logs / f"{name}.log"
    stream = path.open("wb")
    args = [sys.executable, "-m", module, "--ros-args", "--params-file", profile]
    args += [arg for override in overrides for arg in ("-p", override)]
    process = subprocess.Popen(args, stdout=stream, stderr=subprocess.STDOUT, env=env)
    return _Child(name, process, path, stream)


def _stop(child: _Child) -> int | None:
    """SIGINT, then SIGKILL after a grace period; the exit code (negative: killed by signal)."""
    process = child.process
    for sig in (signal.SIGINT, signal.SIGKILL):
        if process.poll() is not None:
            break
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            continue
    child.stream.close()
    return process.poll()


class _Loop:
    """This process's side of the loop: service clients and the two nodes' status topics."""

    def __init__(self, context: Context, children: Sequence[_Child], camera_topic: str,
                 policy: PolicyTopics) -> None:
        self._children = children
        self._node = Node("vam_eval", context=context)
        self._lock = threading.Lock()
        self._episode: EpisodeStatus | None = None
        self._policy: PolicyStatus | None = None
        self._recording = False
        self._frames: list[tuple[float, np.ndarray]] = []
        self._chunks: list[tuple[float, float]] | None = None  # (latency, delay) while running
        sim = f"/{SIM_NODE_NAME}"
        self._node.create_subscription(EpisodeStatus, f"{sim}/episode", self._on_episode, 10)
        self._node.create_subscription(PolicyStatus, policy.status, self._on_policy, 10)
        self._node.create_subscription(Image, camera_topic, self._on_image, 10)
        self._node.create_subscription(ActionChunk, policy.action_chunk, self._on_chunk, 10)
        node = f"/{NODE_NAME}"
        self._reset = self._node.create_client(ResetEpisode, f"{sim}/reset")
        self._instruction = self._node.create_client(SetInstruction, f"{node}/set_instruction")
        self._pause = self._node.create_client(Trigger, f"{node}/pause")
        self._resume = self._node.create_client(Trigger, f"{node}/resume")
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self._node)
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=2.0)
        self._node.destroy_node()

    def _spin(self) -> None:
        with contextlib.suppress(ExternalShutdownException):
            self._executor.spin()

    def _on_episode(self, msg: EpisodeStatus) -> None:
        with self._lock:
            self._episode = msg

    def _on_policy(self, msg: PolicyStatus) -> None:
        with self._lock:
            self._policy = msg

    def _on_chunk(self, msg: ActionChunk) -> None:
        delay = (stamp_ns(msg.header.stamp) - stamp_ns(msg.observation_stamp)) * 1e-9
        with self._lock:
            if self._chunks is not None:
                self._chunks.append((msg.inference_latency_s, delay))

    def _on_image(self, msg: Image) -> None:
        with self._lock:
            if not self._recording:
                return
        frame = image_to_rgb(msg)
        with self._lock:
            self._frames.append((stamp_ns(msg.header.stamp) * 1e-9, frame))

    def save_frames(self, path: Path) -> None:
        """Write the frames of the last recorded episode (none received: no file)."""
        with self._lock:
            frames, self._frames = self._frames, []
        if frames:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, frames=np.stack([f for _, f in frames]),
                                stamps=np.array([t for t, _ in frames]))

    def wait_until_ready(self, timeout_s: float) -> None:
        """Both nodes up and connected: the sim reports an episode, and the policy (loaded) is
        paused with no active fault, so it receives the sim's cameras and joint states (just
        after start-up DDS discovery may still be matching them; an episode started then would
        lose its first seconds)."""
        def ready() -> bool:
            return self._episode is not None and self._policy is not None and (
                self._policy.state == _PAUSED and not self._policy.active_faults)

        try:
            self._wait(ready, timeout_s, "both nodes to start")
        except EvalError as error:
            policy = self._policy
            state = "no status" if policy is None else (
                f"state {policy.state}, active faults {list(policy.active_faults)}")
            raise EvalError(f"{error} (policy node: {state})") from error
        for client in (self._reset, self._instruction, self._pause, self._resume):
            if not client.wait_for_service(timeout_sec=_SERVICE_TIMEOUT_S):
                raise EvalError(f"service {client.srv_name} did not appear")

    def episode(self, task: str, seed: int, time_limit_s: float,
                record: bool = False) -> EpisodeOutcome:
        """Reset, instruct, resume, wait until done, pause; the sim's final report.

        record: keep the camera frames from the resume until done, for `save_frames`.
        """
        self._call(self._pause, Trigger.Request())
        with self._lock:
            before = self._episode.episode if self._episode else 0
        reply = self._call(self._reset, ResetEpisode.Request(task=task, seed=seed))
        if not reply.success:
            raise EvalError(f"sim refused the reset to {task} seed {seed}: {reply.message}")
        self._wait(lambda: self._episode is not None and self._episode.episode > before,
                   _SERVICE_TIMEOUT_S, "the new episode's status")
        answer = self._call(self._instruction,
                            SetInstruction.Request(instruction=reply.instruction))
        if not answer.success:
            raise EvalError(f"policy refused the instruction: {answer.message}")
        started = time.monotonic()
        with self._lock:
            self._recording, self._frames, self._chunks = record, [], []
        self._call(self._resume, Trigger.Request())
        self._wait(lambda: self._episode is not None and self._episode.episode > before
                   and self._episode.done,
                   time_limit_s / _MIN_REAL_TIME_FACTOR + _SERVICE_TIMEOUT_S,
                   f"episode {task} seed {seed} to end")
        wall_s = time.monotonic() - started
        self._call(self._pause, Trigger.Request())
        with self._lock:
            final, chunks = self._episode, np.array(self._chunks, dtype=float).reshape(-1, 2)
            self._recording, self._chunks = False, None
        if final is None:
            raise EvalError("lost the episode status")
        latency = delay = None
        if len(chunks):
            latency, delay = (float(v) for v in chunks.mean(axis=0))
        return EpisodeOutcome(
            task=task, seed=seed, instruction=reply.instruction, success=final.success,
            sim_time_s=final.sim_time_s, wall_time_s=wall_s,
            trajectories_accepted=final.trajectories_accepted,
            trajectories_rejected=final.trajectories_rejected,
            joint_travel_rad=final.joint_travel_rad, real_time_factor=final.real_time_factor,
            chunks=len(chunks), inference_latency_s=latency, chunk_delay_s=delay,
        )

    def _call(self, client: Client, request: Any) -> Any:
        if not client.wait_for_service(timeout_sec=_SERVICE_TIMEOUT_S):
            raise EvalError(f"service {client.srv_name} is not available")
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        self._wait(done.is_set, _SERVICE_TIMEOUT_S, f"an answer from {client.srv_name}")
        return future.result()

    def _wait(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `ready` until true; fail early when a node process has died."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if ready():
                    return
            for child in self._children:
                if child.process.poll() is not None:
                    raise EvalError(f"{child.name} exited (code {child.process.returncode}) "
                                    f"while waiting for {what}; last lines of {child.log}:\n"
                                    + _tail(child.log))
            if time.monotonic() > deadline:
                raise EvalError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.05)


def _chunk_timing(outcome: EpisodeOutcome) -> str:
    if not outcome.chunks:
        return "no chunk"
    return (f"{outcome.chunks} chunks, inference {outcome.inference_latency_s:.2f} s, "
            f"observation to chunk {outcome.chunk_delay_s:.2f} s")


def policy_timing(outcomes: Sequence[EpisodeOutcome]) -> dict[str, Any]:
    """Chunks over all episodes, with their mean inference time and delay (None: no chunk)."""
    timed = [o for o in outcomes if o.chunks]
    chunks = sum(o.chunks for o in timed)

    def mean(field: str) -> float | None:
        return sum(getattr(o, field) * o.chunks for o in timed) / chunks if chunks else None

    return {"chunks": chunks, "inference_latency_s": mean("inference_latency_s"),
            "chunk_delay_s": mean("chunk_delay_s")}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(unreadable: {error})"
