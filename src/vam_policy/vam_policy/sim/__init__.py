"""The simulated arm: MuJoCo physics, language-conditioned tasks and scripted experts.

No rclpy here; the simulator's ROS node lives in `ros/`.
"""

import os

# Offscreen rendering on a headless machine. MuJoCo reads this once, when it is first
# imported, so it is set here, before any module of this room can import it.
os.environ.setdefault("MUJOCO_GL", "egl")
