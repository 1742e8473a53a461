"""Where a job computes and in what precision: the one home of device choice and autocast.

On CUDA the networks run under bf16 autocast with channels_last inputs and weights; on CPU in fp32.
"""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    """The GPU Ray gave this process (CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on CPU (fp32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """`x` in channels_last memory format on CUDA (faster convolutions there); as it is on the CPU."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x
