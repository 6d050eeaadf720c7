"""Demonstrations to datasets: rosbag2 reading (via `rosbags`), episodes, LeRobot interchange.

May import `model` (for the shared transforms) but never rclpy: bags are read without ROS.
"""
