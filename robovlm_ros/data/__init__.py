"""Offline data: rosbag2 episodes -> aligned frames -> a LeRobot v3 dataset, and training windows."""
