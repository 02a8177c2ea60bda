"""PolicyRunner: observation in, safe robot action out (LeRobot's ``select_action`` idea), no ROS.

    runner = PolicyRunner("ckpt/")          # device/dtype "auto": CUDA + bf16 when available, else CPU fp32
    runner.set_instruction("pick up the red block")
    action = runner.step({"rgb": rgb, "hand_rgb": hand, "state": state})   # float64[7]

Each step the observation joins a window of ``window_size`` frames. A chunk of ``fwd_pred_next_n``
actions is predicted for the newest frame; ``execute_steps`` of them run before the next prediction
(or, with ``ensemble=True``, a chunk is predicted every step and overlapping chunks are averaged).
Actions are unnormalised with the checkpoint's statistics and pass the safety layer.
"""
from __future__ import annotations

import time
from collections import deque

import numpy as np
import torch

from ..model import RoboVLM
from ..model.window_inference import Frame
from .chunking import ChunkSchedule
from .safety import SafetyLimits


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    try:
        return dev, {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}") from None


class PolicyRunner:
    def __init__(self, checkpoint, device: str = "auto", dtype: str = "auto", execute_steps: int | None = None,
                 ensemble: bool = False, ensemble_decay: float = 0.1, use_cache: bool = True,
                 limits: SafetyLimits | None = None, compile: bool = False, cuda_graphs: bool = True):
        self.device, self.dtype = resolve_device(device, dtype)
        model = checkpoint if isinstance(checkpoint, RoboVLM) else RoboVLM.from_pretrained(str(checkpoint))
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.model.pack_rnn_weights()
        self.model.cuda_graphs = cuda_graphs  # on CUDA: the step's VLM pass and decoding replayed as graphs
        if compile:  # compiled during warmup(), before the robot depends on it
            self.model.compile_modules()
        self.config = self.model.config
        self.ensemble_decay = ensemble_decay
        # step()'s chunk execution: synchronous (each chunk computed when the queue is empty)
        self.schedule = ChunkSchedule(self.config.fwd_pred_next_n, execute_steps,
                                      ensemble_decay=ensemble_decay if ensemble else None)
        self.execute_steps = self.schedule.execute_steps
        self.limits = limits or SafetyLimits()
        self.policy = self.model.window_predictor(use_cache=use_cache)
        self.instruction: str | None = None
        self._text = None
        self.last_chunk: np.ndarray | None = None      # newest unnormalised chunk [chunk, 7]
        self.last_inference_s: float | None = None     # wall time of the newest prediction
        self.warm_tokens: int | None = None             # the instruction token count the last warm-up met
        self.last_warmup_s: float | None = None         # how long the last warm-up took
        self.warmups = 0                                # warm-ups run (set_instruction may run one)
        self.reset()

    def reset(self) -> None:
        """Start a new episode: empty window, caches and action queue (the instruction stays)."""
        self._window: deque[Frame] = deque(maxlen=self.config.window_size)
        self._serial = 0
        self._chunk_norm: torch.Tensor | None = None  # newest normalised chunk, for discrete pre history
        self._since_chunk = 0
        self.schedule.reset()
        self.policy.reset()

    def warmup(self) -> float:
        """Run the policy on blank inputs so one-off initialisation (kernels, allocator, lazy imports, CUDA
        graph capture, compilation) happens before the robot depends on it; returns the seconds it took.
        A chunk is predicted at every window length and once more after the window slid, then once after a
        frame that joined without a prediction (execute_steps > 1; discrete ``pre`` history feeds it with the
        actions it executed): every input shape an episode meets (a graph and a compiled kernel are bound to
        their shapes; the window fills first, and the node predicts whenever a chunk runs low, so at any
        length). With an instruction set it warms up with that one (a graph is bound to the instruction's
        token count, and ``set_instruction`` warms up again for another count). State is restored."""
        t0 = time.perf_counter()
        s = self.config.image_size
        blank = {"rgb": np.zeros((s, s, 3), np.uint8), "hand_rgb": np.zeros((s, s, 3), np.uint8),
                 "state": np.zeros(self.config.action_dim)}
        saved = (self.instruction, self._text)
        try:
            self._use_instruction(self.instruction or "warm up")
            for _ in range(self.config.window_size + 1):
                self.predict_chunk(blank)
            if self.config.window_size > 1:
                self.reset()
                self.predict_chunk(blank)
                self.observe(blank)
                self.predict_chunk(blank)
            self.warm_tokens = self._text[0].shape[1]
        finally:  # also when it fails: no blank frame stays in the window of the instruction's episode
            self.instruction, self._text = saved
            self.last_chunk = self.last_inference_s = None
            self.reset()
        self.last_warmup_s = time.perf_counter() - t0
        self.warmups += 1
        return self.last_warmup_s

    def needs_warmup(self, text: str) -> bool:
        """Whether ``set_instruction(text)`` warms up again: the runner was warmed up, for another token count,
        and has CUDA graphs or compiled kernels, which are bound to it (made then, at the episode's start, not
        during its first steps while the arm waits)."""
        return self._needs_warmup(self.model.processor.text([text.strip()])[0].shape[1])

    def _needs_warmup(self, tokens: int) -> bool:
        return self.warm_tokens is not None and self.model.binds_shapes(self.device) and tokens != self.warm_tokens

    def set_instruction(self, text: str) -> None:
        """A new task: tokenised once here; the history restarts because old frames belong to another task. A
        warmed-up runner warms up again when the instruction has another token count (``needs_warmup``)."""
        self._use_instruction(text)
        if self._needs_warmup(self._text[0].shape[1]):
            self.warmup()

    def _use_instruction(self, text: str) -> None:
        text = (text or "").strip()
        if not text:
            raise ValueError("the instruction is empty")
        ids, mask = self.model.processor.text([text])
        self._text = (ids.to(self.device), mask.to(self.device))
        self.instruction = text
        self.reset()

    def preprocess(self, obs) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """An observation as the policy takes it, on its device: rgb [3, S, S], hand_rgb [3, S, S] or None,
        normalised state [7] (model.processor, then moved; what every step does before the policy)."""
        p = self.model.processor
        images = lambda x: p.images(x, self.device, self.dtype)  # noqa: E731  (normalised on the device)
        hand = None
        if self.config.use_hand_rgb:
            if obs.get("hand_rgb") is None:
                raise ValueError("this policy uses the gripper camera: the observation needs 'hand_rgb'")
            hand = images(obs["hand_rgb"])
        return images(obs["rgb"]), hand, p.state(obs["state"]).to(device=self.device, dtype=self.dtype)

    def _frame(self, obs) -> Frame:
        frame = self.preprocess(obs)
        self._serial += 1
        return Frame(self._serial, *frame)

    def step(self, observation: dict) -> np.ndarray:
        """One control step -> float64[7] (6 arm values within the limits + gripper +-1): the frame joins
        the window, a chunk is predicted when the schedule wants one, the next queued action comes out."""
        if self.schedule.wants_chunk():
            mark = self.schedule.request()
            self.schedule.add_chunk(self.predict_chunk(observation), mark)
        else:
            self.observe(observation)
        return self.limits.apply(self.schedule.pop())

    def predict_chunk(self, observation: dict) -> np.ndarray:
        """The frame joins the window and the chunk for it is predicted: float64 [chunk, 7], unnormalised,
        not yet safety-limited (``limits.apply`` each action before it is sent)."""
        self._append(observation)
        t0 = time.perf_counter()
        try:
            chunk = self.policy.predict(list(self._window), self._text)
        except BaseException:  # the frame leaves again: discrete pre history needs every frame to carry actions
            self._window.pop()
            raise
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.last_inference_s = time.perf_counter() - t0
        self._chunk_norm, self._since_chunk = chunk.float(), 0
        self.last_chunk = self.model.normalizer.unnormalize_action(self._chunk_norm.cpu()).numpy().astype(np.float64)
        return self.last_chunk

    def observe(self, observation: dict) -> None:
        """The frame joins the window without a prediction (a control step that executes queued actions). In
        discrete ``pre`` history a frame carries the actions executed from it on: before the episode's first
        chunk there are none, so such a frame does not join (the node's first chunk after a warm-up comes with
        the frames seen meanwhile)."""
        c = self.config
        if self._chunk_norm is None and c.action_space == "discrete" and c.history_type == "pre":
            return
        frame = self._append(observation)
        self._since_chunk += 1
        if self._chunk_norm is not None:  # discrete pre: the frame carries the actions executed from it on
            rest = self._chunk_norm[min(self._since_chunk, len(self._chunk_norm) - 1):]
            self.policy.carry(frame, rest.to(self.device))

    def _append(self, observation: dict) -> Frame:
        if self._text is None:
            raise RuntimeError("no instruction: call set_instruction() first")
        frame = self._frame(observation)
        self._window.append(frame)
        return frame
