"""The dataset quality report: each planted recording fault is found, named and advised against, a clean
recording is not; convert writes it (JSON + a plot per episode) and `robovlm-ros inspect` prints it."""
import json

import numpy as np
import pytest

from robovlm_ros.cli import main
from robovlm_ros.data.convert import convert_bags
from robovlm_ros.data.quality import frozen_and_stale, idle_stretches
from test_convert import MS, T, episode_messages, image, joints, params, write_bag

N = 40  # frames of 0.1 s per episode (the camera and joints at 20 Hz)
T0 = 1_000 * MS


def command(t, value):
    return ("/cmd", "std_msgs/msg/Float64MultiArray", t,
            T["std_msgs/msg/Float64MultiArray"](layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
                                                data=np.full(6, float(value))))


def faulty(kind):
    """An episode with one planted fault (or none: "clean")."""
    msgs = episode_messages(n=N, t0=T0)
    rel = lambda m: (m[2] - T0) / 1e9  # noqa: E731
    if kind == "gap":  # the camera driver stalls for 1.5 s
        msgs = [m for m in msgs if not (m[0] == "/cam" and 1.0 < rel(m) < 2.5)]
    elif kind == "frozen":  # new messages, the same picture, from 1 s to 2.5 s
        msgs = [("/cam", m[1], m[2], image(m[2], 7)) if m[0] == "/cam" and 1.0 < rel(m) < 2.5 else m for m in msgs]
    elif kind == "stale":  # the camera at 5 Hz under 10 Hz frames: every other frame reuses an image
        msgs = [m for m in msgs if not (m[0] == "/cam" and round(rel(m) / 0.05) % 4)]
    elif kind == "idle":  # nobody moves the arm for the first 2.5 s
        msgs = [m for m in msgs if m[0] != "/cmd" and not (m[0] == "/joints" and rel(m) < 2.5)]
        msgs += [("/joints", "sensor_msgs/msg/JointState", T0 + k * 50 * MS + MS,
                  joints(T0 + k * 50 * MS, 50)) for k in range(50)]
        msgs += [command(T0 + j * 100 * MS + 10 * MS, 0.0 if j < 25 else j) for j in range(N)]
    elif kind == "skew":  # the camera's header stamps run slow against the recorder's clock
        msgs = [("/cam", m[1], m[2], image(m[2] - int(rel(m) * 0.2e9), int(rel(m) * 20))) if m[0] == "/cam" else m
                for m in msgs]
    return msgs


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    for kind in ("a_clean", "b_gap", "c_frozen", "d_stale", "e_idle", "f_skew"):
        write_bag(root / "bags" / kind, faulty(kind.split("_")[1]))
    robot = params(root, max_linear_velocity=100.0, max_angular_velocity=100.0)
    reports = convert_bags([str(root / "bags")], str(root / "ds"), robot, progress=False, max_age_s=0.25)
    assert [r.status for r in reports] == ["converted"] * 6
    report = json.loads((root / "ds" / "quality" / "report.json").read_text())
    return root, {e["source"].rsplit("/", 1)[1]: e for e in report["episodes"]}, report


def test_a_clean_recording_gets_no_advice(converted):
    _, eps, _ = converted
    clean = eps["a_clean"]
    assert clean["advise_drop"] == [] and clean["stale_frames"] == 0 and clean["frozen_frames"] == 0
    cam = clean["streams"]["camera"]
    assert cam["rate_hz"] == pytest.approx(20.0, rel=0.01) and cam["gaps"] == 0
    assert abs(cam["stamp_skew_s"]["median"]) < 1e-3 and cam["stamp_skew_s"]["spread_p5_p95"] < 1e-3
    assert clean["streams"]["arm commands"]["rate_hz"] == pytest.approx(10.0, rel=0.01)
    assert clean["idle"] == []


@pytest.mark.parametrize("bag, reason", [("b_gap", "camera: 1.50 s without a message at 1.0 s"),
                                         ("c_frozen", "show a frozen camera"),
                                         ("d_stale", "reuse the previous camera image"),
                                         ("e_idle", "idle"), ("f_skew", "camera: header stamps drift")])
def test_each_planted_fault_is_found_and_advised_against(converted, bag, reason):
    _, eps, report = converted
    e = eps[bag]
    assert any(reason in r for r in e["advise_drop"]), e["advise_drop"]
    assert len(e["advise_drop"]) == 1, e["advise_drop"]  # no other finding on a clean remainder
    assert e["episode_index"] in report["advise_drop"]


def test_fault_measurements(converted):
    _, eps, _ = converted
    assert eps["b_gap"]["streams"]["camera"]["gaps"] == 1
    assert eps["b_gap"]["streams"]["camera"]["longest_gap_at_s"] == pytest.approx(1.0, abs=0.01)
    assert 12 <= eps["c_frozen"]["frozen_frames"] <= 15  # 1.0 .. 2.5 s at 10 Hz, the first frame changes
    assert eps["d_stale"]["stale_frames"] == pytest.approx(eps["d_stale"]["frames"] / 2, abs=2)
    idle = eps["e_idle"]["idle"]
    assert len(idle) == 1 and idle[0]["start_s"] == 0.0 and idle[0]["seconds"] == pytest.approx(2.5, abs=0.15)
    assert eps["f_skew"]["streams"]["camera"]["stamp_skew_s"]["spread_p5_p95"] == pytest.approx(0.2 * 3.6, rel=0.1)


def test_actions_beyond_the_nodes_limits_are_advised_against(tmp_path):
    write_bag(tmp_path / "bags" / "ep", episode_messages(n=N, t0=T0))  # arm commands up to 39 * sqrt(3)
    convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), params(tmp_path), progress=False)
    e = json.loads((tmp_path / "ds" / "quality" / "report.json").read_text())["episodes"][0]
    assert e["limits"]["max_linear_norm"] == pytest.approx(39 * np.sqrt(3), rel=1e-3)
    assert any("velocity limits" in r for r in e["advise_drop"])


def test_inspect_prints_the_report_and_plots_exist(converted, capsys):
    root, eps, _ = converted
    for e in eps.values():
        assert (root / "ds" / "quality" / e["plot"]).stat().st_size > 5000
    assert main(["inspect", str(root / "ds")]) == 0
    out = capsys.readouterr().out
    assert "6 episodes" in out and "5 advised to drop" in out
    drops = [line for line in out.splitlines() if "DROP" in line]
    assert len(drops) == 5 and not any("a_clean" in line for line in drops)
    assert main(["inspect", str(root / "ds"), "--episode", str(eps["b_gap"]["episode_index"])]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 3)[3])["source"].endswith("b_gap")


def test_stale_and_frozen_are_told_apart():
    images = np.zeros((5, 4, 4, 3), np.uint8)
    images[1:3], images[3:] = 10, 20  # frame 2 repeats frame 1's pixels from a new message; 4 reuses 3's message
    stale, frozen = frozen_and_stale(images, np.array([0, 1, 2, 3, 3]))
    assert (stale, frozen) == (1, 1)


def test_idle_needs_both_no_motion_and_no_command():
    state, action = np.zeros((30, 7)), np.zeros((30, 7))
    state[:, 6] = 1.0
    action[20:, 0] = 0.1  # commanded to move from frame 20 on
    assert idle_stretches(state, action, 10.0) == [{"start_s": 0.0, "seconds": 2.0}]
    state[5:, 0] = np.arange(25) * 0.01  # the arm moves from frame 6 on
    assert idle_stretches(state, action, 10.0) == []
