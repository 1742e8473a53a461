"""Where a job computes and in what precision: the one home of device choice and autocast.

Every job that trains has `train.precision`: "fp32" (the default and the official code's: every
paper preset) or "bf16" (autocast to bfloat16, on a GPU or a CPU with bf16 units; the losses and the
soft-argmax stay float32). On CUDA the networks also use channels_last inputs and weights.
"""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    """The GPU Ray gave this process (CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str = "fp32"):
    """bf16 autocast on `device` for precision "bf16"; a no-op context for "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """`x` in channels_last memory format on CUDA (faster convolutions there); as it is on the CPU."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x
