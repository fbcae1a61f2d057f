"""Inference throughput at batch 32, 224 px: torchvision's googlenet vs ours (plain and optimized), fp32 and
bf16, interleaved in one run; prints medians and ratios. Usage: .venv/bin/python bench/inference.py"""

import statistics
import time

import torch
import torchvision

from googlenet import create_model
from googlenet.optimize import optimize_for_inference

BATCH, SIZE, ROUNDS = 32, 224, 7


def timed(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> float:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


def main() -> None:
    torch.manual_seed(0)
    peer = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()
    ours = create_model("torchvision", aux=False)
    ours.load_state_dict(peer.state_dict())
    ours.eval()
    fast = optimize_for_inference(ours)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    peer_cl = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()
    peer_cl.load_state_dict(peer.state_dict())
    peer_cl = peer_cl.to(memory_format=torch.channels_last)
    cases = {
        "torchvision fp32": (peer, x, False),
        "torchvision bf16 channels_last": (peer_cl, x_cl, True),
        "ours optimized fp32": (fast, x_cl, False),
        "ours optimized bf16": (fast, x_cl, True),
    }
    for model, inp, bf16 in cases.values():  # warm-up
        timed(model, inp, bf16)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):  # interleaved, so drifts in machine load hit every case alike
        for name, (model, inp, bf16) in cases.items():
            times[name].append(timed(model, inp, bf16))
    base = statistics.median(times["torchvision bf16 channels_last"])
    print(f"batch {BATCH}, {SIZE} px, median of {ROUNDS} interleaved rounds, {torch.get_num_threads()} threads")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<32} {BATCH / median:7.1f} img/s   {base / median:5.2f}x torchvision's best eager")


if __name__ == "__main__":
    main()
