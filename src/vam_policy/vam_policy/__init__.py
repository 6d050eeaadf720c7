"""VAM: a video-action model robot policy.

Rooms, and what each may import:
- `model/`: pure torch + diffusers (backbone, action decoder, policy wrapper, checkpoints).
- `data/`, `train/`: rosbag2 -> datasets and the two training stages; `rosbags`, never rclpy.
- `ros/`: the ROS 2 edge (nodes, message conversion, parameters); the only place rclpy lives.
- `sim/`: the simulated arm (physics, tasks, scripted experts); its ROS node lives in `ros/`.
- `dotted_names.py`: nested mappings as dotted names, for every room (imports nothing).
"""

__version__ = "0.1.0"
