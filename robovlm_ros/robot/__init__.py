"""The robot's side of the messages, without ROS: JointState -> state, command messages <-> actions,
the gripper's ±1 convention. One home for the node, the bag converter and the simulator."""
