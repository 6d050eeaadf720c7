"""The ROS 2 edge: nodes, message conversion, parameters.

The only room that imports rclpy and message packages. It stays thin: callbacks copy into
buffers, and everything that decides what the arm does is a pure function in `model` or here.
"""
