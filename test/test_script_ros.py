"""ros/spin.py's helpers for scripts that drive nodes (evaluation, demonstrations), over real rclpy."""
import uuid

import pytest

rclpy = pytest.importorskip("rclpy")
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from robovlm_ros.ros.spin import NodesInBackground, ServiceCaller  # noqa: E402


def test_service_caller_keeps_one_client_per_service_and_times_out():
    ns = f"c{uuid.uuid4().hex[:8]}"
    calls = []
    with NodesInBackground() as ros:
        server = rclpy.create_node("server", namespace=ns)
        server.create_service(Trigger, "count", lambda req, res: (calls.append(1), setattr(res, "message", str(len(calls))), res)[-1])
        server.create_service(SetBool, "echo", lambda req, res: (setattr(res, "success", req.data), res)[-1])
        # a server whose node nobody spins: discoverable, never answers
        silent = rclpy.create_node("silent", namespace=ns)
        silent.create_service(Trigger, "never", lambda req, res: res)
        client = rclpy.create_node("client", namespace=ns)
        ros.add(server, client)
        ros.start()
        call = ServiceCaller(client, timeout=1.0)
        answers = [call(f"/{ns}/count").message for _ in range(30)]
        assert answers == [str(i) for i in range(1, 31)]  # every call answered, in order
        assert call(f"/{ns}/echo", SetBool, SetBool.Request(data=True)).success is True
        assert call(f"/{ns}/echo", SetBool, SetBool.Request(data=False)).success is False
        assert set(call.clients) == {f"/{ns}/count", f"/{ns}/echo"}  # one client per service, reused
        assert len(list(client.clients)) == 2
        with pytest.raises(RuntimeError, match="did not answer"):
            call(f"/{ns}/never")
        with pytest.raises(RuntimeError, match="not available"):
            ServiceCaller(client, timeout=0.2)(f"/{ns}/missing")
        silent.destroy_node()
