"""What a training step costs (robovlm_ros/train/cost.py, `robovlm-ros bench --training`)."""
import pytest
import torch

from robovlm_ros.model import PolicyConfig, RoboVLM
from robovlm_ros.model.synthetic import synthetic_batch
from robovlm_ros.train.cost import saved_activation_bytes, training_cost


def test_gradient_checkpointing_keeps_far_fewer_activations_for_backward():
    """The saving issue 15 asks to show, measured as the bytes a forward keeps for backward (device
    independent; on the GPU `bench --training` also reports the peak memory)."""
    kept = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = RoboVLM(PolicyConfig.tiny("paligemma", size="small", gradient_checkpointing=ckpt, window_size=2,
                                          fwd_pred_next_n=2))
        kept[ckpt] = saved_activation_bytes(model, synthetic_batch(model, 2))
    assert kept[True] < 0.3 * kept[False], kept
    assert kept[True] > 0


def test_training_cost_runs_lightning_steps_and_counts_what_trains():
    lora = training_cost(PolicyConfig.tiny("paligemma", window_size=2, fwd_pred_next_n=2, lora={"r": 4}), 2, steps=3)
    full = training_cost(PolicyConfig.tiny("paligemma", window_size=2, fwd_pred_next_n=2), 2, steps=3)
    assert lora["steps"] == full["steps"] == 3 and len(lora["step_s"]) == 2  # the first (setup) step left out
    assert lora["trainable_parameters"] < 0.5 * lora["parameters"]
    assert full["trainable_parameters"] == full["parameters"] < lora["parameters"]  # LoRA adds its adapters
    assert full["peak_memory_gb"] is None  # CPU: no allocator statistics


def test_training_cost_reports_the_parameter_bytes_frozen_weights_in_bf16_save():
    """bench --training's parameter bytes while training: LoRA under bf16-mixed keeps its frozen linear / conv
    weights in bf16 (2 bytes each instead of 4); --frozen-fp32 keeps the float32 figure to compare."""
    cfg = PolicyConfig.tiny("paligemma", window_size=2, fwd_pred_next_n=2, lora={"r": 4}, train_vision=False)
    bf16 = training_cost(cfg, 2, steps=2, precision="bf16-mixed")
    fp32 = training_cost(cfg, 2, steps=2, precision="bf16-mixed", frozen_in_compute_dtype=False)
    assert fp32["parameter_gb"] * 1e9 == pytest.approx(4 * fp32["parameters"], rel=1e-9)
    # the frozen linear / conv values, read off the saving: most of a LoRA policy's weights
    halved = (fp32["parameter_gb"] - bf16["parameter_gb"]) * 1e9 / 2
    assert 0.5 * fp32["parameters"] < halved < fp32["parameters"] - fp32["trainable_parameters"]
    assert bf16["frozen_values_in_compute_dtype"] == pytest.approx(halved) and fp32["frozen_values_in_compute_dtype"] == 0
