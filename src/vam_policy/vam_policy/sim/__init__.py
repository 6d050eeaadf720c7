"""The simulated arm: MuJoCo physics, language-conditioned tasks and scripted experts.

No rclpy here; the simulator's ROS node lives in `ros/`.
"""

import importlib.util
import os

# Offscreen rendering on a headless machine. MuJoCo reads this once, when it is first
# imported, so it is set here, before any module of this room can import it.
os.environ.setdefault("MUJOCO_GL", "egl")

# Triton (imported by torch/diffusers once a policy is built) bundles its own LLVM; loaded
# after a software (Mesa llvmpipe) render context exists in the same process, it crashes the
# process. Loaded first, both work. Only processes that render and also run the model pay it.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
