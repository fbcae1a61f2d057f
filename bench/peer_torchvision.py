"""The peer: torchvision's googlenet trained on Fashion-MNIST the obvious way, timed on this machine.

The recipe a practitioner would write without this project: torchvision.models.googlenet with its 224-px
stem given 1-channel input, images resized to 64 px, SGD with a one-cycle learning rate (peak 0.1), label
smoothing 0.1, random crop + flip, the auxiliary losses at 0.3, bf16 autocast, channels_last, batch 128,
10 epochs on all 60,000 training images, then the 10,000 test images. It prints one JSON line with the
test top-1, the wall-clock minutes (data loading included) and the CPU or GPU model, for docs/results.md.
On a GPU (--device cuda) it stays the obvious loop: each batch is augmented on the CPU and copied over, and
the loss is read back at every step for the progress bar.

With --minutes M it is given a wall-clock budget instead of 10 epochs, as the preset is: it times a few steps
on a throw-away copy of itself, fits as many steps as the budget leaves after the test evaluation, and ends its
one-cycle schedule there (the last epoch may be partial).

    python bench/peer_torchvision.py --seed 0 --data data [--epochs 10 | --minutes M] [--device cuda] [--json F]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from tqdm import tqdm

from googlenet.benchmark import machine_name

SIZE = 64  # the peer's input: Fashion-MNIST upsampled so the 224-px stem leaves Inception 3a at 8 px
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's pixel statistics


def load(root: str, train: bool) -> tuple[Tensor, Tensor]:
    data = torchvision.datasets.FashionMNIST(root, train=train, download=False)
    images = data.data.unsqueeze(1).float().div(255).sub(MEAN).div(STD)
    return images, data.targets


def to_input(x: Tensor) -> Tensor:
    x = F.interpolate(x, size=SIZE, mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random crop with 2 px of padding (at 28 px) and a random horizontal flip, per image."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2, n), generator=generator)
    rows = torch.arange(28).view(1, 28) + dy.view(n, 1)
    cols = torch.arange(28).view(1, 28) + dx.view(n, 1)
    crops = padded[torch.arange(n).view(n, 1, 1), 0, rows.view(n, 28, 1), cols.view(n, 1, 28)].unsqueeze(1)
    flip = torch.rand(n, generator=generator) < 0.5
    crops[flip] = crops[flip].flip(-1)
    return crops


def build_model() -> nn.Module:
    model = torchvision.models.googlenet(num_classes=10, aux_logits=True, init_weights=True, transform_input=False)
    model.conv1.conv = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # grayscale input
    return model.to(memory_format=torch.channels_last)


@torch.no_grad()
def test_top1(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(labels), 500):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(to_input(images[start : start + 500].to(device)))
        correct += int((logits.float().argmax(1).cpu() == labels[start : start + 500]).sum())
    return correct / len(labels)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Tensor:
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = model(x)
        loss = loss_fn(out.logits, y) + 0.3 * (loss_fn(out.aux_logits1, y) + loss_fn(out.aux_logits2, y))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def timings(
    model: nn.Module, train_x: Tensor, test_x: Tensor, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """(seconds per training step, seconds for the test evaluation), timed on a copy of the model: the median
    of 8 whole steps of the training loop (augmentation, upsampling, forward, backward, SGD) after 3 warm-up
    steps, and the evaluation of 1,000 test images scaled to all of them."""
    trial = copy.deepcopy(model)
    optimizer = torch.optim.SGD(trial.parameters(), lr=0.0, momentum=0.9)
    y = torch.zeros(batch_size, dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(0)  # its own: the run's augmentation stream stays the seed's
    gaps = []
    for index in range(11):
        started = time.monotonic()
        x = to_input(augment(train_x[:batch_size], generator)).to(device)
        train_step(trial.train(), optimizer, x, y).item()
        if index >= 3:
            gaps.append(time.monotonic() - started)
    started = time.monotonic()
    test_top1(trial, test_x[:1000], torch.zeros(1000, dtype=torch.long), device)
    evaluation = (time.monotonic() - started) * len(test_x) / 1000
    return sorted(gaps)[len(gaps) // 2], evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data", help="folder holding FashionMNIST/raw (make data puts it there)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--minutes", type=float, help="wall-clock budget, start to test result (replaces --epochs)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but no CUDA device is available")
    device = torch.device(args.device)

    started = time.monotonic()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train_x, train_y = load(args.data, train=True)
    test_x, test_y = load(args.data, train=False)
    model = build_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(train_y) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    if args.minutes:
        step_seconds, evaluation_seconds = timings(model, train_x, test_x, args.batch_size, device)
        seconds_left = args.minutes * 60 - (time.monotonic() - started) - evaluation_seconds
        total_steps = max(1, int(seconds_left / step_seconds))
    epochs = math.ceil(total_steps / steps_per_epoch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total_steps, pct_start=0.15)
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_y), generator=generator)
        bar = tqdm(
            range(min(steps_per_epoch, total_steps - step)), desc=f"peer epoch {epoch + 1}/{epochs}", leave=False
        )
        for index in bar:
            picked = order[index * args.batch_size : (index + 1) * args.batch_size]
            x, y = to_input(augment(train_x[picked], generator)).to(device), train_y[picked].to(device)
            loss = train_step(model, optimizer, x, y)
            schedule.step()
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
        print(f"epoch {epoch + 1}: {(time.monotonic() - started) / 60:.1f} min", flush=True)
    result = {
        "peer": "torchvision googlenet, 64 px, one-cycle lr 0.1, batch 128",
        "seed": args.seed,
        "epochs": round(total_steps / steps_per_epoch, 2),
        "budget_minutes": args.minutes,
        "test_top1": test_top1(model, test_x, test_y, device),
        "minutes": (time.monotonic() - started) / 60,
        "cpu": machine_name(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(line + "\n")


if __name__ == "__main__":
    main()
