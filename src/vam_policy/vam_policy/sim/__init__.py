"""The simulated arm: MuJoCo physics, language-conditioned tasks and scripted experts.

No rclpy here; the simulator's ROS node lives in `ros/`.
"""
