"""Shared test set-up: loopback-only ROS 2 settings and real processes that always die.

Every process a test starts gets `ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`, this session's
private `ROS_DOMAIN_ID` and a temporary `ROS_LOG_DIR`; nothing here imports rclpy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
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
    """Starts processes in their own session and kills every one of them at teardown
    (`kill_all`, or leaving a `with` block).

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

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill_all()

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


class NodeAndPeer:
    """A node under test and the peer process that watches it over DDS (test/peers/).

    The peer prints one JSON event a line and takes JSON commands on stdin; every event
    carries `recv` (when the peer got it), and the kinds in `STAMPED` also their message
    `stamp`.
    """

    STAMPED: tuple[str, ...] = ()

    def __init__(self, node: subprocess.Popen[str], peer: subprocess.Popen[str],
                 parse: Callable[[str], dict[str, Any]] = json.loads) -> None:
        self.node, self.peer = node, peer
        self.node_log = Lines(node.stderr)  # type: ignore[arg-type]
        Lines(node.stdout)  # type: ignore[arg-type]
        self.received = Lines(peer.stdout, parse)  # type: ignore[arg-type]
        self._next_id = 0

    def events(self, kind: str, since: float = 0.0) -> list[dict[str, Any]]:
        """Events of `kind` stamped (`STAMPED` kinds) or received (others) after `since`."""
        key = "stamp" if kind in self.STAMPED else "recv"
        return [e for e in self.received.snapshot()
                if e["event"] == kind and e.get(key, e.get("t", 0.0)) > since]

    def wait_for(self, kind: str, match: Callable[[dict[str, Any]], bool] = lambda e: True,
                 since: float = 0.0, timeout: float = 10.0) -> dict[str, Any]:
        """The first event of `kind` after `since` that `match`es; fails if the node exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events(kind, since) if match(e)]
            if found:
                return found[0]
            assert self.node.poll() is None, f"node exited: {''.join(self.node_log.items)}"
            time.sleep(0.05)
        raise AssertionError(f"no matching {kind} within {timeout} s; {self.timeout_detail(since)}"
                             f"node log tail {self.node_log.snapshot()[-5:]}")

    def timeout_detail(self, since: float) -> str:
        """What `wait_for`'s timeout message adds before the node log (`...; `)."""
        return ""

    def command(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send a command to the peer; return its ack or the node's reply."""
        self._next_id += 1
        ident = self._next_id
        self.peer.stdin.write(json.dumps({"cmd": cmd, "id": ident, **fields}) + "\n")
        self.peer.stdin.flush()
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            for event in self.received.snapshot():
                if event["event"] in ("ack", "reply") and event["id"] == ident:
                    return event
            time.sleep(0.02)
        raise AssertionError(f"no answer to {cmd} {fields}")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight policy for the sim_panda joints and cameras, saved once per session.

    Built on the fly (~2 s on a CPU) so node tests need no downloaded weights; imports torch
    only when a test asks for it.
    """
    import torch

    from vam_policy.model.checkpoint import save_checkpoint
    from vam_policy.model.policy import VAMPolicy
    from vam_policy.model.policy_config import policy_preset
    from vam_policy.ros.parameters import load_parameters_file

    profile = load_parameters_file(REPO_ROOT / "config" / "sim_panda.yaml")
    torch.manual_seed(0)
    policy = VAMPolicy.build(policy_preset("tiny", joint_names=profile["joint_names"],
                                           cameras=len(profile["camera_topics"])))
    return save_checkpoint(policy, tmp_path_factory.mktemp("checkpoint") / "tiny_sim_panda")


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Real child processes, killed (SIGINT, then SIGKILL) when the test ends."""
    with Processes() as started:
        yield started


@pytest.fixture(scope="module")
def module_processes() -> Iterator[Processes]:
    """`processes` for a module fixture's node run: killed when the test module ends."""
    with Processes() as started:
        yield started
