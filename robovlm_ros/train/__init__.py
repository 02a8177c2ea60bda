"""Training: a Lightning module around RoboVLM, data from LeRobot datasets, checkpoint export."""
