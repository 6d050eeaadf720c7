"""Every launch file builds a LaunchDescription (where `launch` is installed; it is not on PyPI)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import REPO_ROOT

LAUNCH_FILES = sorted(
    [*REPO_ROOT.glob("launch/*.launch.py"), *REPO_ROOT.glob("src/*/launch/*.launch.py")]
)


def test_the_workspace_has_launch_files() -> None:
    assert any(p.parent == REPO_ROOT / "launch" for p in LAUNCH_FILES)


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_launch_file_generates_a_description(path: Path) -> None:
    # launch_ros first: the workspace's own launch/ folder would pass for a `launch` package.
    pytest.importorskip("launch_ros", reason="ROS 2 launch_ros is not installed here")
    launch = pytest.importorskip("launch", reason="ROS 2 launch is not installed here")
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module.generate_launch_description(), launch.LaunchDescription)
