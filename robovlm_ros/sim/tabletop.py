"""TabletopEnv: seeded episodes of "pick up the <colour> block", commanded like a real arm.

Commands are what the policy node publishes: an end-effector twist (linear x, y, z in m/s,
angular x, y, z in rad/s, world frame, at the tool centre point) turned into joint targets by
damped least-squares differential IK, and a gripper command (+1 open / -1 close). Success is read
from the physics: the named block's centre more than 10 cm above the table.
"""
from __future__ import annotations

import mujoco
import numpy as np

from .scene import COLORS, scene_xml

HOME = np.array([0.0, 0.3867, -0.0896, 1.2736, -1.5709, -1.5707])  # tool 20 cm above (0.4, 0), pointing down
TOOL_DOWN = np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])  # tool x = world x, tool z = world -z
FINGER_OPEN, FINGER_CLOSED = 0.0, -0.03  # finger slide joint targets
OPEN_WIDTH = 0.027  # finger opening (0.03 + q) at or above which the gripper reports "open"
SUCCESS_HEIGHT = 0.1
BLOCK_X, BLOCK_Y = (0.3, 0.5), (-0.15, 0.15)  # where block centres are placed (m), at least 9 cm apart


def instruction_for(color: str) -> str:
    return f"pick up the {color} block"


def orientation_error(R: np.ndarray, R_target: np.ndarray) -> np.ndarray:
    """Rotation vector (world frame) that turns R into R_target."""
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, (R_target @ R.T).reshape(-1))
    v = np.zeros(3)
    mujoco.mju_quat2Vel(v, q, 1.0)
    return v


class TabletopEnv:
    """``actuation_noise`` is a seeded velocity-tracking error: each commanded twist component is scaled
    by (1 + e), e ~ N(0, actuation_noise) redrawn every ``noise_hold`` steps, as a real arm's servo
    loop under- or overshoots. Being proportional to the command it leaves standing still exact, so
    precise final alignment stays possible. Recording demonstrations with it makes the expert show
    how to recover from being off its path (noise injection, as in DART, Laskey et al. 2017); the
    recorded command stays the expert's own. ``noise_seed`` > 0 draws another noise sequence for the
    same episodes (to measure how a policy's success spreads under small perturbations)."""

    def __init__(self, image_size: int = 96, control_hz: float = 10.0, actuation_noise: float = 0.0,
                 noise_hold: int = 5, noise_seed: int = 0):
        self.actuation_noise, self.noise_hold, self.noise_seed = float(actuation_noise), int(noise_hold), int(noise_seed)
        self._noise_rng, self._noise, self._steps = np.random.default_rng(0), np.zeros(6), 0
        self.model = mujoco.MjModel.from_xml_string(scene_xml(image_size))
        self.data = mujoco.MjData(self.model)
        self.dt = 1.0 / control_hz
        self.substeps = int(round(self.dt / self.model.opt.timestep))
        self.image_size = image_size
        self._renderer = None  # created on first render: physics-only use needs no GL context
        self.renderer_info = ""  # the OpenGL renderer that draws the cameras (once one has rendered)
        self.colors = list(COLORS)
        self.tcp_id = self.model.site("tcp").id
        self.target = self.colors[0]

    # ------------------------------------------------------------------ episodes
    def reset(self, seed: int, target: str | None = None) -> str:
        """Blocks at seeded random places (>= 9 cm apart), arm at home; returns the instruction."""
        rng = np.random.default_rng(seed)
        self._noise_rng = np.random.default_rng([seed, 1] + ([self.noise_seed] if self.noise_seed else []))
        self._noise, self._steps = np.zeros(6), 0
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[:6] = d.ctrl[:6] = HOME
        self.q_target = HOME.copy()
        d.ctrl[6] = FINGER_OPEN
        places: list[np.ndarray] = []
        while len(places) < len(self.colors):
            p = np.array([rng.uniform(*BLOCK_X), rng.uniform(*BLOCK_Y)])
            if all(np.linalg.norm(p - q) > 0.09 for q in places):
                places.append(p)
        for color, p in zip(self.colors, places):
            adr = m.joint(f"{color}_free").qposadr[0]
            d.qpos[adr : adr + 7] = [p[0], p[1], 0.02, 1, 0, 0, 0]
        self.target = target or self.colors[rng.integers(len(self.colors))]
        mujoco.mj_forward(m, d)
        for _ in range(100):  # let the blocks settle
            mujoco.mj_step(m, d)
        return self.instruction

    @property
    def instruction(self) -> str:
        return instruction_for(self.target)

    def step(self, action) -> None:
        """Apply one control period of action = [twist (6), gripper (+-1)]."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (7,) or not np.isfinite(a).all():
            raise ValueError(f"action must be 7 finite values, got {a}")
        if self.actuation_noise > 0 and self._steps % self.noise_hold == 0:
            self._noise = self._noise_rng.normal(0.0, self.actuation_noise, 6)  # relative gain errors
        self._steps += 1
        jp, jr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        mujoco.mj_jacSite(self.model, self.data, jp, jr, self.tcp_id)
        J = np.vstack([jp, jr])[:, :6]
        twist = a[:6] * (1.0 + self._noise)
        qdot = J.T @ np.linalg.solve(J @ J.T + 0.05**2 * np.eye(6), twist)  # damped least squares
        self.q_target = self.q_target + qdot * self.dt
        self.data.ctrl[:6] = self.q_target
        self.data.ctrl[6] = FINGER_OPEN if a[6] >= 0 else FINGER_CLOSED
        for _ in range(self.substeps):
            mujoco.mj_step(self.model, self.data)

    # ------------------------------------------------------------------ readings
    def block_position(self, color: str) -> np.ndarray:
        return self.data.body(color).xpos.copy()

    def tool_pose(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.site_xpos[self.tcp_id].copy(), self.data.site_xmat[self.tcp_id].reshape(3, 3).copy()

    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[:6].copy()

    def gripper_width(self) -> float:
        return float(0.03 + self.data.qpos[6])  # opening of one finger, 0 (closed) .. 0.03 (open)

    def state(self) -> np.ndarray:
        return np.r_[self.joint_positions(), 1.0 if self.gripper_width() >= OPEN_WIDTH else -1.0]

    def success(self) -> bool:
        return bool(self.block_position(self.target)[2] > SUCCESS_HEIGHT)

    def close(self) -> None:
        """Free the renderer; call it from the thread that rendered (EGL contexts belong to a thread)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def render(self, camera: str) -> np.ndarray:
        """[S, S, 3] uint8 RGB from "static" or "gripper" (MUJOCO_GL=egl renders on the CPU)."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
            self.renderer_info = gl_renderer()
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render().copy()


def gl_renderer() -> str:
    """The current OpenGL context's renderer and version (e.g. Mesa llvmpipe): images, and so a
    policy's inputs, can differ between renderers."""
    try:
        from OpenGL import GL

        return " / ".join(GL.glGetString(k).decode() for k in (GL.GL_RENDERER, GL.GL_VERSION))
    except Exception as e:  # no PyOpenGL, or a backend without a current context: say so, do not fail
        return f"unknown ({type(e).__name__})"
