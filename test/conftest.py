"""Shared test set-up: loopback-only ROS 2 settings and real processes that always die.

Every process a test starts gets `ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`, this session's
private `ROS_DOMAIN_ID` and a temporary `ROS_LOG_DIR`; nothing here imports rclpy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from vam_policy.ros.isolation import isolate_this_process

REPO_ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).resolve().parent / "peers"

# Applied at import, before any test could start rclpy or a child process.
isolate_this_process()
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Processes:
    """Starts processes in their own session and kills every one of them at teardown.

    A ROS 2 process may ignore SIGINT while it waits in DDS, so teardown escalates to
    SIGKILL on the whole process group.
    """

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[str]] = []

    def start(self, *args: str | Path, **kwargs) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [str(a) for a in args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=kwargs.pop("env", dict(os.environ)),
            **kwargs,
        )
        self._started.append(process)
        return process

    def python(self, script: str | Path, *args: str) -> subprocess.Popen[str]:
        """Start `script` with this interpreter (the workspace's .venv)."""
        return self.start(sys.executable, script, *args)

    def kill_all(self) -> None:
        for process in self._started:
            if process.poll() is not None:
                continue
            for sig, grace_s in ((signal.SIGINT, 3.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(process.pid, sig)
                    process.wait(timeout=grace_s)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue


class Lines:
    """Reads a process's text stream on a thread (a full pipe would block the process)."""

    def __init__(self, stream: IO[str], parse: Callable[[str], Any] = str) -> None:
        self.items: list[Any] = []
        self._lock = threading.Lock()
        self._parse = parse
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._lock:
                self.items.append(self._parse(line))

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self.items)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight policy for the sim_panda joints, saved once per session.

    Built on the fly (~2 s on a CPU) so node tests need no downloaded weights; imports torch
    only when a test asks for it.
    """
    import torch

    from vam_policy.model.checkpoint import save_checkpoint
    from vam_policy.model.policy import VAMPolicy
    from vam_policy.model.policy_config import policy_preset
    from vam_policy.ros.parameters import load_parameters_file

    joints = load_parameters_file(REPO_ROOT / "config" / "sim_panda.yaml")["joint_names"]
    torch.manual_seed(0)
    policy = VAMPolicy.build(policy_preset("tiny", joint_names=joints))
    return save_checkpoint(policy, tmp_path_factory.mktemp("checkpoint") / "tiny_sim_panda")


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Real child processes, killed (SIGINT, then SIGKILL) when the test ends."""
    started = Processes()
    try:
        yield started
    finally:
        started.kill_all()
