"""Bag conversion without ROS: bags written with rosbags, alignment rules, errors, derived actions."""
import json
import os

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from robovlm_ros.data.align import align
from robovlm_ros.data.convert import convert_bags
from robovlm_ros.node_params import load_policy_params
from robovlm_ros.data.lerobot_reader import LeRobotEpisodes

TS = get_typestore(Stores.ROS2_KILTED)
T = TS.types
JOINTS = [f"joint{i}" for i in range(1, 7)]
MS = 1_000_000


def header(t_ns):
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9),
                                    frame_id="")


def image(t_ns, value):
    data = np.full(32 * 32 * 3, value % 250, np.uint8)
    return T["sensor_msgs/msg/Image"](header=header(t_ns), height=32, width=32, encoding="rgb8", is_bigendian=0,
                                      step=96, data=data)


def joints(t_ns, value, names=JOINTS + ["gripper_joint"]):
    pos = np.array([value + i / 10 for i in range(6)] + [0.04][: len(names) - 6], np.float64)
    z = np.zeros(0, np.float64)
    return T["sensor_msgs/msg/JointState"](header=header(t_ns), name=names, position=pos, velocity=z, effort=z)


def write_bag(path, messages, instruction="pick up the red block", storage=StoragePlugin.MCAP, typestore=TS):
    """messages: [(topic, msgtype, t_ns, msg)] -> a rosbag2 directory like episode_recorder writes
    (``instruction`` None: like ``ros2 bag record``, no instruction stored)."""
    with Writer(path, version=9, storage_plugin=storage) as w:
        conns = {}
        for topic, msgtype, t, msg in sorted(messages, key=lambda m: m[2]):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=typestore)
            w.write(conns[topic], t, typestore.serialize_cdr(msg, msgtype))
        if instruction is not None:
            w.set_custom_data("robovlm_ros.instruction", instruction)
    return path


def params(tmp_path, **overrides):
    p = {"camera_topic": "/cam", "gripper_camera_topic": "", "joint_states_topic": "/joints",
         "arm_command_topic": "/cmd", "gripper_command_topic": "", "control_rate_hz": 10.0, **overrides}
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump({"robovlm_policy": {"ros__parameters": p}}))
    return load_policy_params(str(path))  # the robot as `robovlm-ros convert --params` reads it


def episode_messages(n=20, t0=1_000 * MS, jitter=0):
    """Camera + joints at 20 Hz and Float64MultiArray commands at 10 Hz (value = command index)."""
    msgs = []
    for k in range(2 * n):
        t = t0 + k * 50 * MS
        msgs += [("/cam", "sensor_msgs/msg/Image", t, image(t, k)), ("/joints", "sensor_msgs/msg/JointState", t + 1 * MS,
                                                                      joints(t, k))]
    for j in range(n):
        t = t0 + j * 100 * MS + 10 * MS + jitter
        msgs.append(("/cmd", "std_msgs/msg/Float64MultiArray", t,
                     T["std_msgs/msg/Float64MultiArray"](layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
                                                         data=np.full(6, float(j)))))
    return msgs


def test_alignment_never_uses_a_later_message():
    rng = np.random.default_rng(0)
    ref = [(int(t), ("ref", int(t))) for t in np.sort(rng.integers(0, 10**10, 200))]
    other = [(int(t), ("other", int(t))) for t in np.sort(rng.integers(0, 10**10, 500))]
    out = align(ref, {"other": other}, rate_hz=50.0, max_age_s=0.5)
    assert out.times_ns and out.candidates == len(out.times_ns) + sum(out.dropped.values())
    for t, (_, t_other) in zip(out.times_ns, out.picks["other"]):
        assert t_other <= t and t - t_other <= 0.5e9
        later = [u for u, _ in other if t_other < u <= t]
        assert not later, "a newer message at or before t existed"
    gaps = np.diff(out.times_ns)
    assert (gaps >= 0.75e9 / 50).all()  # thinned to the control rate


def test_commands_pair_with_the_observations_before_them(tmp_path):
    write_bag(tmp_path / "bags" / "ep1", episode_messages())
    reports = convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), params(tmp_path), progress=False,
                           storage="png")  # lossless: the pixels say which camera frame was paired
    assert reports[0].status == "converted" and reports[0].frames == 20
    ep = LeRobotEpisodes(str(tmp_path / "ds")).episodes[0]
    np.testing.assert_array_equal(ep["action"][:, 0], np.arange(20))
    # command j at t0 + 100 j + 10 ms: the latest camera frame is k = 2j (t0 + 100 j ms)
    pixels = [im[0, 0, 0] for im in ep["rgb"]]
    np.testing.assert_array_equal(pixels, [(2 * j) % 250 for j in range(20)])
    np.testing.assert_allclose(ep["state"][:, 0], [2 * j for j in range(20)], atol=1e-5)
    assert ep["task"] == "pick up the red block"  # from the bag's custom data
    stats = json.loads((tmp_path / "ds" / "meta" / "stats.json").read_text())
    assert stats["action"]["q99"][0] == pytest.approx(np.quantile(np.arange(20), 0.99))


def test_every_command_keeps_commands_closer_than_a_period(tmp_path):
    # a lockstep recording: command j answers camera frame 2j, but a late timer put some commands only
    # 30 ms after the previous one (thinning to 10 Hz would merge those with their neighbours)
    msgs = [m for m in episode_messages() if m[0] != "/cmd"]
    cmd_times = [1_000 * MS + j * 100 * MS + (80 if j % 4 == 1 else 10) * MS for j in range(20)]
    for j, t in enumerate(cmd_times):
        msgs.append(("/cmd", "std_msgs/msg/Float64MultiArray", t,
                     T["std_msgs/msg/Float64MultiArray"](layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
                                                         data=np.full(6, float(j)))))
    write_bag(tmp_path / "bags" / "ep1", msgs)
    thinned = convert_bags([str(tmp_path / "bags")], str(tmp_path / "a"), params(tmp_path), progress=False)
    assert thinned[0].frames < 20
    kept = convert_bags([str(tmp_path / "bags")], str(tmp_path / "b"), params(tmp_path), progress=False,
                        every_command=True, storage="png")
    assert kept[0].frames == 20
    ep = LeRobotEpisodes(str(tmp_path / "b")).episodes[0]
    np.testing.assert_array_equal(ep["action"][:, 0], np.arange(20))
    # each command still pairs with the newest camera frame before it (80 ms late: frame 2j + 1)
    pixels = [im[0, 0, 0] for im in ep["rgb"]]
    np.testing.assert_array_equal(pixels, [(2 * j + (j % 4 == 1)) % 250 for j in range(20)])


def test_stale_streams_drop_frames_and_are_counted(tmp_path):
    msgs = [m for m in episode_messages() if not (m[0] == "/cam" and 500 * MS < m[2] - 1000 * MS < 1200 * MS)]
    write_bag(tmp_path / "bags" / "ep1", msgs)
    reports = convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), params(tmp_path), max_age_s=0.2,
                           progress=False)
    r = reports[0]
    assert r.frames + sum(r.dropped.values()) == 20
    assert sum(n for why, n in r.dropped.items() if why.startswith("camera")) == 5  # commands at 610..1010 ms


def test_truncated_bag_is_reported_and_others_still_convert(tmp_path):
    write_bag(tmp_path / "bags" / "a_good", episode_messages())
    bad = write_bag(tmp_path / "bags" / "b_bad", episode_messages())
    write_bag(tmp_path / "bags" / "c_good", episode_messages(), storage=StoragePlugin.SQLITE3)
    f = next(p for p in os.listdir(bad) if p.endswith(".mcap"))
    data = (bad / f).read_bytes()
    (bad / f).write_bytes(data[: len(data) // 3])
    reports = convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), params(tmp_path), progress=False)
    status = {os.path.basename(r.bag): r.status for r in reports}
    assert status == {"a_good": "converted", "b_bad": "error", "c_good": "converted"}
    assert "b_bad" in next(r.message for r in reports if r.status == "error")
    assert LeRobotEpisodes(str(tmp_path / "ds")).info["total_episodes"] == 2


def test_actions_derived_from_states_without_commands(tmp_path):
    msgs = [m for m in episode_messages() if m[0] != "/cmd"]
    write_bag(tmp_path / "bags" / "ep", msgs)
    reports = convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), params(tmp_path, arm_command_topic=""),
                           rate_hz=10.0, progress=False)
    ep = LeRobotEpisodes(str(tmp_path / "ds")).episodes[0]
    # camera at 20 Hz thinned to 10 Hz: joint values advance by 2 per kept frame, 0.1 s apart
    np.testing.assert_allclose(ep["action"][:, :6], 20.0, atol=1e-3)
    assert reports[0].dropped.get("last frame (no next state for the action)") == 1
    # the first camera frame precedes the first joint state by 1 ms: no state yet, dropped
    assert reports[0].dropped.get("joints missing or older than 0.25s") == 1
    assert len(ep["action"]) == reports[0].frames == 18


def test_existing_dataset_is_not_overwritten_by_accident(tmp_path):
    write_bag(tmp_path / "bags" / "ep", episode_messages())
    convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), params(tmp_path), progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), params(tmp_path), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["bags", "ds", "robot.yaml"]  # no temporary leftovers


def test_without_a_gripper_joint_the_state_shows_the_last_gripper_command(tmp_path):
    """A robot that reports no gripper joint: the state's gripper is the last gripper command before
    the frame (+1 before the first), which is what the policy node gives the model (its previous
    command; test_policy_node checks that side). Conversion used a constant +1 here before."""
    t0 = 1_000 * MS
    msgs = [m for m in episode_messages(t0=t0) if m[0] != "/joints"]
    msgs += [("/joints", "sensor_msgs/msg/JointState", t0 + k * 50 * MS + MS, joints(t0 + k * 50 * MS, k, names=JOINTS))
             for k in range(40)]
    closed = set(range(5, 13))  # commands 5..12 close the gripper
    f64 = lambda v: T["std_msgs/msg/Float64MultiArray"](  # noqa: E731
        layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0), data=np.array([v]))
    msgs += [("/grip", "std_msgs/msg/Float64MultiArray", t0 + j * 100 * MS + 11 * MS, f64(0.0 if j in closed else 0.04))
             for j in range(20)]  # just after arm command j, as the policy node sends them
    write_bag(tmp_path / "bags" / "ep1", msgs)
    reports = convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"),
                           params(tmp_path, gripper_joint="", gripper_command_topic="/grip"), progress=False)
    assert reports[0].status == "converted" and reports[0].frames == 20
    ep = LeRobotEpisodes(str(tmp_path / "ds")).episodes[0]
    commanded = np.array([-1.0 if j in closed else 1.0 for j in range(20)])
    np.testing.assert_array_equal(ep["action"][:, 6], commanded)
    np.testing.assert_array_equal(ep["state"][:, 6], np.r_[1.0, commanded[:-1]])


def string(text):
    return T["std_msgs/msg/String"](data=text)


def test_bags_recorded_with_ros2_bag_record_convert_or_say_why(tmp_path, capsys):
    """Bags a user recorded around a teleoperated arm: the instruction on a String topic, gripper
    commands as Float64 or as control_msgs GripperCommand (a type the bag itself defines); bags that
    cannot be converted each get their reason and the others still convert."""
    from rosbags.typesys import get_types_from_msg

    from robovlm_ros.cli import build_parser
    from robovlm_ros.commands.convert import run
    from robovlm_ros.data.convert import NothingConverted

    t0 = 1_000 * MS
    base = [m for m in episode_messages(t0=t0)]
    instr = ("/robovlm_policy/instruction", "std_msgs/msg/String", t0 - MS, string("stack the cubes"))
    f64 = lambda j: ("/grip", "std_msgs/msg/Float64", t0 + j * 100 * MS + 11 * MS,  # noqa: E731
                     T["std_msgs/msg/Float64"](data=0.0 if j >= 10 else 0.04))
    write_bag(tmp_path / "bags" / "a_float64", base + [instr] + [f64(j) for j in range(20)], instruction=None)
    ts = get_typestore(Stores.ROS2_KILTED)
    ts.register(get_types_from_msg("float64 position\nfloat64 max_effort", "control_msgs/msg/GripperCommand"))
    grip_cmd = lambda j: ("/grip", "control_msgs/msg/GripperCommand", t0 + j * 100 * MS + 11 * MS,  # noqa: E731
                          ts.types["control_msgs/msg/GripperCommand"](position=0.0 if j >= 10 else 0.04, max_effort=5.0))
    write_bag(tmp_path / "bags" / "b_control_msgs", base + [instr] + [grip_cmd(j) for j in range(20)],
              instruction=None, typestore=ts)
    two = ("/robovlm_policy/instruction", "std_msgs/msg/String", t0 + 500 * MS, string("push the blue cube"))
    write_bag(tmp_path / "bags" / "c_two_tasks", base + [instr, two], instruction=None)
    write_bag(tmp_path / "bags" / "d_no_instruction", base, instruction=None)
    write_bag(tmp_path / "bags" / "e_no_camera", [m for m in base if m[0] != "/cam"])
    corrupt = write_bag(tmp_path / "bags" / "f_truncated", base)
    mcap = next(p for p in os.listdir(corrupt) if p.endswith(".mcap"))
    with open(os.path.join(corrupt, mcap), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(corrupt, mcap)) // 2)

    robot = params(tmp_path, gripper_command_topic="/grip")
    reports = {os.path.basename(r.bag): r for r in
               convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), robot, progress=False)}
    assert [reports[k].status for k in sorted(reports)] == ["converted", "converted", "error", "error", "error",
                                                            "error"]
    assert "2 different instructions" in reports["c_two_tasks"].message and "push the blue cube" in \
        reports["c_two_tasks"].message
    assert "no instruction" in reports["d_no_instruction"].message
    assert "no messages on /cam" in reports["e_no_camera"].message and "/joints" in reports["e_no_camera"].message
    assert "cannot read bag" in reports["f_truncated"].message
    eps = LeRobotEpisodes(str(tmp_path / "ds")).episodes
    assert [e["task"] for e in eps] == ["stack the cubes", "stack the cubes"]
    expected = np.where(np.arange(20) >= 10, -1.0, 1.0)  # commands 10.. close the gripper
    for ep in eps:
        np.testing.assert_array_equal(ep["action"][:, 6], expected)

    # nothing convertible: every bag's reason is printed, then the error (no traceback)
    with pytest.raises(NothingConverted) as e:
        convert_bags([str(tmp_path / "bags" / "d_no_instruction")], str(tmp_path / "none"), robot, progress=False)
    assert "no instruction" in e.value.reports[0].message
    args = build_parser().parse_args(["convert", str(tmp_path / "bags" / "d_no_instruction"), str(corrupt),
                                      "--out", str(tmp_path / "n")])
    assert run(args) == 1
    out = capsys.readouterr().out
    assert "d_no_instruction: bag" in out and "f_truncated: cannot read bag" in out and "nothing written" in out


def test_without_gripper_commands_the_gripper_action_is_the_state_it_led_to(tmp_path):
    t0 = 1_000 * MS
    msgs = [m for m in episode_messages(t0=t0) if m[0] != "/joints"]
    width = lambda k: 0.0 if k >= 20 else 0.04  # noqa: E731  the fingers close from frame 20 (t0 + 1 s) on
    for k in range(40):
        js = joints(t0 + k * 50 * MS, k)
        js.position[6] = width(k)
        msgs.append(("/joints", "sensor_msgs/msg/JointState", t0 + k * 50 * MS + MS, js))
    write_bag(tmp_path / "bags" / "ep", msgs)
    convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), params(tmp_path), progress=False)
    ep = LeRobotEpisodes(str(tmp_path / "ds")).episodes[0]
    # frame j shows the state before command j; its gripper action is frame j+1's gripper state
    np.testing.assert_array_equal(ep["action"][:-1, 6], ep["state"][1:, 6])
    assert ep["state"][9, 6] == 1.0 and ep["action"][9, 6] == -1.0  # the step that closed it


def test_without_a_params_file_topics_and_joints_are_found_by_type(tmp_path, capsys):
    """`robovlm-ros convert` on a `ros2 bag record` bag with no parameters file: the cameras (the wrist one
    by name), joint states, arm and gripper commands are found by message type and printed."""
    from robovlm_ros.cli import build_parser
    from robovlm_ros.commands.convert import run
    from robovlm_ros.data.discover import discover_robot
    from robovlm_ros.data.bags import BagError

    t0 = 1_000 * MS
    rename = {"/cam": "/front/image_raw", "/cmd": "/arm_controller/commands", "/joints": "/joint_states"}
    msgs = [(rename.get(t, t), *rest) for t, *rest in episode_messages(t0=t0)]
    msgs += [("/wrist_cam/image_raw", "sensor_msgs/msg/Image", t0 + k * 50 * MS, image(t0 + k * 50 * MS, k))
             for k in range(40)]
    msgs += [("/gripper/command", "std_msgs/msg/Float64", t0 + j * 100 * MS + 11 * MS, T["std_msgs/msg/Float64"](data=0.04))
             for j in range(20)]
    msgs += [("/robovlm_policy/instruction", "std_msgs/msg/String", t0, string("stack the cubes"))]
    bag = write_bag(tmp_path / "bags" / "ep", msgs, instruction=None)
    robot = discover_robot(str(bag))
    assert (robot.camera_topic, robot.gripper_camera_topic, robot.joint_states_topic) == (
        "/front/image_raw", "/wrist_cam/image_raw", "/joint_states")
    assert (robot.arm_command_topic, robot.arm_command_type, robot.gripper_command_topic) == (
        "/arm_controller/commands", "float64_array", "/gripper/command")
    assert robot.arm_joints == JOINTS and robot.gripper_joint == "gripper_joint"
    assert run(build_parser().parse_args(["convert", str(tmp_path / "bags"), "--out", str(tmp_path / "ds")])) == 0
    out = capsys.readouterr().out
    assert "/wrist_cam/image_raw" in out and "[converted]" in out
    ep = LeRobotEpisodes(str(tmp_path / "ds")).episodes[0]
    assert ep["task"] == "stack the cubes" and "hand_rgb" in ep and len(ep["state"]) == 20
    # two arm-command candidates of one type: ambiguous, said so
    cmd = next(m for t, _, _, m in msgs if t == "/arm_controller/commands")
    write_bag(tmp_path / "two" / "ep", msgs + [("/other/commands", "std_msgs/msg/Float64MultiArray", t0, cmd)],
              instruction=None)
    with pytest.raises(BagError, match="several arm command topics"):
        discover_robot(str(tmp_path / "two" / "ep"))


def test_video_is_the_default_with_one_frame_per_row(tmp_path):
    """mp4 per camera, LeRobot's layout: episodes back to back in one file, each a timestamp range whose
    frames are the rows' images (within the codec's loss), timestamps frame_index / fps."""
    import pyarrow.parquet as pq

    from robovlm_ros.data.video import count_frames

    for name in ("ep1", "ep2"):
        write_bag(tmp_path / "bags" / name, episode_messages())
    convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), params(tmp_path), progress=False)
    info = json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())
    feature = info["features"]["observation.images.rgb"]
    assert feature["dtype"] == "video" and feature["info"]["video.codec"] == "av1"
    rows = pq.read_table(tmp_path / "ds" / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    video = tmp_path / "ds" / "videos" / "observation.images.rgb" / "chunk-000" / "file-000.mp4"
    assert count_frames(str(video)) == sum(r["length"] for r in rows) == info["total_frames"] == 40
    assert [r["videos/observation.images.rgb/from_timestamp"] for r in rows] == [0.0, 2.0]
    data = pq.read_table(tmp_path / "ds" / "data" / "chunk-000" / "file-000.parquet").to_pydict()
    np.testing.assert_allclose(data["timestamp"], np.float32(np.array(data["frame_index"]) / 10.0))
    for ep in LeRobotEpisodes(str(tmp_path / "ds")).episodes:
        pixels = np.array([im.astype(float).mean() for im in ep["rgb"]])
        np.testing.assert_allclose(pixels, [(2 * j) % 250 for j in range(20)], atol=3)  # the paired frames


def test_video_storage_refuses_frames_too_small_to_encode(tmp_path):
    from robovlm_ros.data.lerobot import DatasetSettingsError

    write_bag(tmp_path / "bags" / "ep1", episode_messages())
    with pytest.raises(DatasetSettingsError, match="--storage png"):
        convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), params(tmp_path), progress=False, image_size=16)
    assert not (tmp_path / "ds").exists()
