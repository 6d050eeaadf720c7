"""vam_policy_node end to end on this machine: camera stamp -> trajectory published.

    python benchmarks/bench_node.py [--seconds 20] [--width 320 --height 240] [--camera-hz 30]

Builds a tiny random-weight checkpoint for the sim_panda profile, starts the node (CPU) and
the synthetic robot of the tests (test/peers/sensor_feeder.py) on a private loopback domain,
and records for `--seconds`:
  - inference latency (ActionChunk.inference_latency_s),
  - observation -> chunk ready (ActionChunk stamp - observation_stamp: waiting + inference),
  - observation -> first trajectory using the chunk (first JointTrajectory stamped after the
    chunk was ready, minus the chunk's observation stamp: adds the wait for the control tick),
  - trajectory delivery over DDS (receipt - stamp) and the achieved control rate.
Prints a table and writes JSON to benchmarks/results/node_cpu.json. A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
from results_io import RESULTS

from vam_policy.machine import describe_machine
from vam_policy.ros.isolation import local_ros_env
from vam_policy.ros.parameters import load_parameters_file

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "config" / "sim_panda.yaml"
FEEDER = ROOT / "test" / "peers" / "sensor_feeder.py"


def build_checkpoint(folder: Path, joints: list[str]) -> Path:
    import torch

    from vam_policy.model.checkpoint import save_checkpoint
    from vam_policy.model.policy import VAMPolicy
    from vam_policy.model.policy_config import policy_preset

    torch.manual_seed(0)
    return save_checkpoint(VAMPolicy.build(policy_preset("tiny", joint_names=joints)), folder)


def collect(stream: IO[str], events: list[dict[str, Any]]) -> None:
    for line in stream:
        if line.startswith("{"):
            events.append(json.loads(line))


def stop(process: subprocess.Popen[str]) -> None:
    for sig, grace_s in ((signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue


def stats_ms(values: list[float]) -> dict[str, float | int]:
    array = np.asarray(values) * 1e3
    return {"n": int(array.size), "median_ms": float(np.median(array)),
            "p90_ms": float(np.percentile(array, 90)), "max_ms": float(array.max())}


def analyse(events: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    trajectories = [e for e in events if e["event"] == "trajectory" and start <= e["stamp"] < end]
    chunks = [e for e in events if e["event"] == "chunk" and start <= e["stamp"] < end]
    if len(trajectories) < 2 or not chunks:
        raise RuntimeError(f"too little output: {len(trajectories)} trajectories, "
                           f"{len(chunks)} chunks")
    stamps = np.array([e["stamp"] for e in trajectories])
    first_use = []
    for chunk in chunks:
        later = stamps[stamps >= chunk["stamp"]]
        if later.size:
            first_use.append(float(later[0]) - chunk["observation_stamp"])
    intervals = np.diff(stamps)
    return {
        "inference": stats_ms([c["latency"] for c in chunks]),
        "observation_to_chunk_ready": stats_ms([c["stamp"] - c["observation_stamp"]
                                                for c in chunks]),
        "observation_to_trajectory": stats_ms(first_use),
        "trajectory_delivery": stats_ms([e["recv"] - e["stamp"] for e in trajectories]),
        "control_rate_hz": float((stamps.size - 1) / (stamps[-1] - stamps[0])),
        "control_interval_p90_ms": float(np.percentile(intervals, 90) * 1e3),
        "chunks_per_s": len(chunks) / (end - start),
    }


def machine() -> dict[str, Any]:
    return {**describe_machine(), "load_average": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--camera-hz", type=float, default=30.0)
    parser.add_argument("--joint-hz", type=float, default=100.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "node_cpu.json")
    args = parser.parse_args()

    profile = load_parameters_file(PROFILE)
    joints = list(profile["joint_names"])
    lower, upper = np.array(profile["joint_position_lower"]), np.array(
        profile["joint_position_upper"])
    env = local_ros_env(log_dir=tempfile.mkdtemp(prefix="vam-bench-log-"))
    env["HF_HUB_OFFLINE"] = "1"
    events: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vam-bench-") as tmp:
        checkpoint = build_checkpoint(Path(tmp) / "tiny_sim_panda", joints)
        start_kwargs: dict[str, Any] = dict(env=env, text=True, start_new_session=True,
                                            stdout=subprocess.PIPE)
        feeder = subprocess.Popen(
            [sys.executable, str(FEEDER), "--joint-names", json.dumps(joints),
             "--positions", json.dumps(((lower + upper) / 2).tolist()),
             "--camera-topic", profile["camera_topics"][0],
             "--trajectory-topic", profile["trajectory_topic"],
             "--camera-hz", str(args.camera_hz), "--joint-hz", str(args.joint_hz),
             "--width", str(args.width), "--height", str(args.height)],
            stdin=subprocess.PIPE, **start_kwargs)
        node = subprocess.Popen(
            [sys.executable, "-m", "vam_policy.ros.node", "--ros-args", "--params-file",
             str(PROFILE), "-p", f"checkpoint:={checkpoint}", "-p", "instruction:=lift the cube",
             "-p", f"camera_topics:=[{profile['camera_topics'][0]}]",  # one camera, one feeder
             "-p", "start_paused:=false"],
            stderr=subprocess.DEVNULL, **start_kwargs)
        threading.Thread(target=collect, args=(feeder.stdout, events), daemon=True).start()
        try:
            deadline = time.monotonic() + 120.0
            while not any(e["event"] == "trajectory" for e in list(events)):
                if time.monotonic() > deadline or node.poll() is not None:
                    raise RuntimeError("the node published no trajectory")
                time.sleep(0.1)
            start = time.time() + 1.0  # let the first chunks settle
            time.sleep(1.0 + args.seconds)
            end = time.time()
        finally:
            stop(node)
            stop(feeder)
    results = analyse(list(events), start, end)
    report = {
        "benchmark": "node", "device": "cpu", "seconds": args.seconds,
        "camera": {"hz": args.camera_hz, "width": args.width, "height": args.height,
                   "encoding": "rgb8"},
        "joint_states_hz": args.joint_hz, "profile": "sim_panda (control_rate_hz 10)",
        "checkpoint": "tiny preset, random weights", "machine": machine(), "results": results,
    }
    print(f"{'measure':34} {'median ms':>10} {'p90 ms':>10} {'n':>6}")
    for name, value in results.items():
        if isinstance(value, dict):
            print(f"{name:34} {value['median_ms']:10.1f} {value['p90_ms']:10.1f} {value['n']:6d}")
    print(f"{'control rate (Hz)':34} {results['control_rate_hz']:10.2f}")
    print(f"{'control interval p90 (ms)':34} {results['control_interval_p90_ms']:10.1f}")
    print(f"{'chunks per second':34} {results['chunks_per_s']:10.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
