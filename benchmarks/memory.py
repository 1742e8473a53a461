"""Memory of one forward+backward pass of a single 96x96 image per backbone, beside Table 2 of the paper.

    python benchmarks/memory.py [--image-size 96] [--device cpu|cuda] [--out memory.json] [--mlflow EXP]

Columns (MB = 2**20 bytes, fp32, train mode, one image, the 128-d MoCo head included):

  params_m, network_mb     parameter count (M) and its fp32 size: Table 2's "#params" and "network size"
  paper_fwd_bwd_mb         Table 2's memory column (platform/landmarks/resources/paper_results/table2_memory.csv)
  summary_fwd_bwd_mb       the same quantity computed the way the paper's numbers were (they match
                           torchsummary's "Forward/backward pass size" to 0.01 MB): 2 x the sum of
                           every module's output size (an output and its gradient), 4 bytes a value
  saved_mb                 what autograd actually keeps for backward (saved_tensors_hooks; unique
                           storages, parameters excluded), i.e. activation memory
  peak_mb                  CUDA: torch.cuda.max_memory_allocated over the pass (parameters, gradients,
                           activations, workspaces); CPU: an ESTIMATE = parameters + gradients + saved_mb
                           (CPU allocations are not tracked), labelled peak_kind = "estimate"

DVE's Hourglass (the paper's comparison) is not part of this platform: its row holds the paper's numbers only.
"""

from __future__ import annotations

import csv
import sys
from importlib import resources
from typing import Any

import torch
from common import bench_parser, finish
from torch import nn

from landmarks.models import build_backbone
from landmarks.registry import ARCHITECTURES

MB = 2**20
PAPER_CSV = "table2_memory.csv"


def paper_table2() -> dict[str, dict[str, float]]:
    """backbone -> {params_m, network_size_mb, fwd_bwd_memory_mb_96px} from the shipped CSV."""
    text = resources.files("landmarks").joinpath("resources/paper_results", PAPER_CSV).read_text()
    return {row["backbone"]: {k: float(row[k]) for k in ("params_m", "network_size_mb", "fwd_bwd_memory_mb_96px")}
            for row in csv.DictReader(text.splitlines())}


def summary_fwd_bwd_mb(model: nn.Module, x: torch.Tensor) -> float:
    """torchsummary's "Forward/backward pass size (MB)": 2 x sum of module output sizes x 4 bytes.

    Every module except the model itself and Sequential/ModuleList containers, once per call
    (a ReLU module called three times in a Bottleneck counts three times), as torchsummary does.
    """
    numels: list[int] = []

    def hook(_module, _inputs, output):
        numels.append(output.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if m is not model and not isinstance(m, (nn.Sequential, nn.ModuleList))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return 2.0 * sum(numels) * 4 / MB


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward (parameters excluded)."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).float().sum()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def cuda_peak_bytes(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(peak bytes allocated during forward+backward, bytes allocated before it: parameters + input)."""
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()  # warm-up: cuDNN picks its algorithms (and workspaces) here
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    before = torch.cuda.memory_allocated(x.device)
    model(x).sum().backward()
    torch.cuda.synchronize(x.device)
    peak = torch.cuda.max_memory_allocated(x.device)
    model.zero_grad(set_to_none=True)
    return peak, before


def measure(name: str, image_size: int, device: torch.device, paper: dict[str, float] | None) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_backbone(name).to(device).train()
    x = torch.rand(1, 3, image_size, image_size, device=device)
    params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    saved = saved_activation_bytes(model, x)
    row: dict[str, Any] = {
        "backbone": name, "params_m": round(params / 1e6, 2), "paper_params_m": paper and paper["params_m"],
        "network_mb": round(param_bytes / MB, 2), "paper_network_mb": paper and paper["network_size_mb"],
        "paper_fwd_bwd_mb": paper and paper["fwd_bwd_memory_mb_96px"] if image_size == 96 else None,
        "summary_fwd_bwd_mb": round(summary_fwd_bwd_mb(model, x), 2), "saved_mb": round(saved / MB, 2),
    }
    if device.type == "cuda":
        peak, before = cuda_peak_bytes(model, x)
        row.update(peak_mb=round(peak / MB, 2), peak_over_params_mb=round((peak - before) / MB, 2),
                   peak_kind="cuda max_memory_allocated")
    else:
        row.update(peak_mb=round((2 * param_bytes + saved) / MB, 2), peak_over_params_mb=round((param_bytes + saved) / MB, 2),
                   peak_kind="estimate: params + grads + saved")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbones", default=",".join(ARCHITECTURES))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    names = ["resnet18"] if args.quick else [n for n in args.backbones.split(",") if n]
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        parser.error(f"unknown backbone(s) {unknown}; valid: {', '.join(ARCHITECTURES)}")
    paper = paper_table2()
    rows = [measure(n, args.image_size, device, paper.get(n)) for n in names]
    for name, ref in paper.items():
        if name not in ARCHITECTURES:  # DVE's Hourglass: the paper's numbers only
            rows.append({"backbone": name, "paper_params_m": ref["params_m"], "paper_network_mb": ref["network_size_mb"],
                         "paper_fwd_bwd_mb": ref["fwd_bwd_memory_mb_96px"] if args.image_size == 96 else None,
                         "peak_kind": "paper only"})
    summary = {f"{r['backbone']}.summary_minus_paper_mb": round(r["summary_fwd_bwd_mb"] - r["paper_fwd_bwd_mb"], 2)
               for r in rows if r.get("summary_fwd_bwd_mb") is not None and r.get("paper_fwd_bwd_mb") is not None}
    finish(args, "memory", rows, params={"image_size": args.image_size, "device": str(device), "dtype": "float32",
                                         "batch": 1, "quick": args.quick},
           summary=summary, label_keys=("backbone",),
           notes=[f"peak_mb on {device.type}: " + ("measured" if device.type == "cuda" else
                                                   "ESTIMATE (params + grads + saved activations)")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
