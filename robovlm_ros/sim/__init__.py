"""Simulated robot: a MuJoCo tabletop arm with a parallel gripper, coloured blocks and a scripted expert."""
