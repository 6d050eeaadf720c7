"""The two training stages: LoRA on the video backbone, then the action decoder on cached latents.

May import `model` and `data`, never rclpy.
"""
