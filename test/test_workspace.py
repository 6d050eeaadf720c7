"""The workspace itself: colcon sees the three packages, interfaces import, self-check passes."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT


def test_colcon_lists_the_three_packages() -> None:
    """The design card's layout: vam_policy, vam_msgs and vam_bringup are colcon packages."""
    out = subprocess.run(
        ["colcon", "list", "--base-paths", "src", "--names-only"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert sorted(out) == ["vam_bringup", "vam_msgs", "vam_policy"]


def test_generated_interfaces_import() -> None:
    """rosidl generated Python for every message and service the node uses."""
    from vam_msgs.msg import ActionChunk, PolicyStatus
    from vam_msgs.srv import SetInstruction

    status = PolicyStatus(state=PolicyStatus.STATE_FAULTED, last_fault="camera stale")
    assert status.state == 3
    assert ActionChunk(horizon=2, positions=[1.0, 2.0]).positions.tolist() == [1.0, 2.0]
    assert SetInstruction.Request(instruction="x").instruction == "x"


def test_selfcheck_passes_in_a_fresh_process() -> None:
    """`vam selfcheck` (the README's first command until the demo exists) succeeds."""
    result = subprocess.run(
        [sys.executable, "-m", "vam_policy.cli", "selfcheck"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "selfcheck passed" in result.stdout
