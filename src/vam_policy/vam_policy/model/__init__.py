"""The model core: video backbone, flow-matching action decoder, policy wrapper, checkpoints.

Pure torch + diffusers so it trains and tests on any machine. Never imports rclpy or any
ROS message package; a test imports it with rclpy blocked.
"""
