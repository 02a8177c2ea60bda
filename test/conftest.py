"""Shared helpers: tiny policies and synthetic batches (real transformers models, tiny configs)."""
import ctypes
import os
import signal
import sys
import time

import pytest
import torch

from processes import descendants
from robovlm_ros.model.synthetic import synthetic_batch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MUJOCO_GL", "egl")
# Node tests talk over DDS: keep them on this machine and off the default domain, so they neither
# disturb nor hear a ROS graph (a real robot) that runs beside them. Subprocesses inherit this.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))  # 1..100: safe DDS port range

ALL_FAMILIES = ("paligemma", "kosmos2", "llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm")


def make_batch(model, b=2, seed=0, instructions=None):
    return synthetic_batch(model, batch_size=b, seed=seed, instructions=instructions)


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile through dynamo's ``eager`` backend: its tracing, guards and recompile limits without the C++
    compiler (seconds, not minutes). Yields the list of graphs dynamo made; a recompile limit hit fails the
    test; the limits compile_modules raises are restored afterwards."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *a, mode=None, **kw: compile_module(self, *a, backend=backend, **kw))
    dynamo = torch._dynamo.config
    torch._dynamo.reset()
    with dynamo.patch(recompile_limit=dynamo.recompile_limit, fail_on_recompile_limit_hit=True,
                      accumulated_recompile_limit=dynamo.accumulated_recompile_limit):
        yield graphs
    torch._dynamo.reset()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_configure(config):
    # Become the subreaper of every process a test starts: a grandchild whose parent died is then
    # re-parented to this process (not to init), so no_process_left_behind sees it too.
    if sys.platform.startswith("linux"):
        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """A test that leaves a process running (a node that ignored SIGTERM, a training run) fails, and
    the process is killed so that it does not load the machine for the tests after it."""
    before = {pid for pid, _ in descendants()}
    yield
    deadline = time.monotonic() + 5.0  # a child that was just signalled may still be exiting
    while (left := [(p, c) for p, c in descendants() if p not in before]) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left:  # said before the kill: on the H200 a CUDA test run died without a word after such a kill
        print(f"\nno_process_left_behind: killing {left}", file=sys.__stderr__, flush=True)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid, _ in left:  # reap the ones that are (or became, as this process is their subreaper) children
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    assert not left, f"the test left processes running (killed now): {left}"
