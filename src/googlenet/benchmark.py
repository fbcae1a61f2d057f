"""`googlenet benchmark`: our inference engines and training step against torchvision's googlenet, ONNX Runtime
and OpenVINO on the same graph, interleaved in one run, with medians, ratios and achieved FLOP/s against a
matrix-multiply roof measured in the same rounds.

Interleaving matters on a shared machine: every round runs every case once, so a burst of load elsewhere
slows all cases alike instead of one. Peak memory is the process's resident high-water mark during a case's
timed call above its resident size just before (Linux: /proc/self/clear_refs resets the mark).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import itertools
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from googlenet import kernels
from googlenet.engines import (
    Engine,
    build_engine,
    engine_choices,
    installed_backends,
    onnxruntime_engine,
    openvino_engine,
)
from googlenet.errors import GoogLeNetError
from googlenet.macs import forward_macs
from googlenet.model import AUX_LOSS_WEIGHT, GoogLeNet, create_model, get_variant
from googlenet.speedups import optimize_for_inference, optimize_for_training
from googlenet.training.loss import training_loss
from googlenet.training.optim import FUSED_SGD_DEVICES

SECTIONS = ("inference", "training", "fashion")
FASHION_VARIANT = "bn"  # the Fashion-MNIST presets' network


@dataclass
class BenchmarkOptions:
    batch: int = 32  # inference batch at ``size`` px
    size: int = 224
    train_batch: int = 32
    fashion_batch: int = 128  # the Fashion-MNIST presets' batch (configs/fashion-mnist*.toml)
    fashion_size: int = 64  # the 10- and 15-minute presets' image size (the 30-minute preset's is 80)
    rounds: int = 5
    latency_repeats: int = 5  # batch-1 calls per round; their median is the round's latency
    roof_size: int = 4096  # n of the n x n x n matrix products that measure the roof
    settle: float = 0.1  # seconds of quiet before each timed case: other runtimes' idle threads stop spinning
    sections: tuple[str, ...] = SECTIONS
    compile: bool = False  # add torch.compile (Inductor, frozen bf16 weights) as a case: ~20 s to compile
    engines: tuple[str, ...] = ()  # limit the external engines; empty: every installed one
    device: str = "cpu"  # "cuda": the PyTorch cases on the GPU (ONNX Runtime and OpenVINO stay off)
    checkpoint: str | None = None  # adds each engine's agreement with our fp32 model on its test split
    profile: bool = False  # adds where the time of our training step goes, by kind of operator


@dataclass
class Case:
    section: str
    name: str
    step: Callable[[], object]  # processes ``images`` images once
    images: int
    flops_per_image: float  # 2 x multiply-adds; x3 for a training step (forward + two backward products)
    single: Callable[[], object] | None = None  # one image, for batch-1 latency
    peer: bool = False
    times: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)


@dataclass
class Row:
    section: str
    name: str
    peer: bool
    images_per_second: float
    latency_ms: float | None
    peak_mib: float | None
    gflops: float
    roof_share: float  # of the bf16 matrix-multiply roof measured in the same rounds
    ratio: float  # against the section's reference (its strongest peer, or its first case)
    reference: str


@dataclass
class Agreement:
    engine: str
    top1: float  # accuracy on the split
    agreement: float  # share of images whose top-1 class equals the fp32 PyTorch model's
    images: int


@dataclass
class BenchmarkReport:
    machine: str
    threads: int
    versions: dict[str, str]
    options: dict[str, Any]
    roof_gflops: dict[str, float]
    rows: list[Row]
    agreement: list[Agreement] = field(default_factory=list)
    profile: dict[str, float] = field(default_factory=dict)  # operator kind -> share of the step's CPU time
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M %Z"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _status_kib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak(device: torch.device) -> float | None:
    """Reset the high-water mark of memory in use (the GPU's allocator, or the process's resident set on the
    CPU) and return the amount in use now, in KiB; None where it cannot be read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 1024
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_kib("VmRSS")


def _peak_since(base: float | None, device: torch.device) -> float | None:
    peak = torch.cuda.max_memory_allocated(device) / 1024 if device.type == "cuda" else _status_kib("VmHWM")
    return None if base is None or peak is None else max(0.0, peak - base) / 1024


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for name in ("torch", "torchvision", "onnxruntime", "openvino", "nncf"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found


def _matmul_cases(n: int, device: torch.device) -> list[Case]:
    def product(dtype: torch.dtype) -> Callable[[], object]:
        a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
        return lambda: a @ b

    return [
        Case("roof", f"matmul {label} {n}^3", product(dtype), 1, 2.0 * n**3)
        for dtype, label in ((torch.bfloat16, "bf16"), (torch.float32, "fp32"))
    ]


def _torch_runner(module: nn.Module, x: Tensor, bf16: bool) -> Callable[[], object]:
    @torch.no_grad()
    def run() -> object:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return module(x)

    return run


def _engine_runner(engine: Engine | Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], object]:
    return lambda: engine(x)


def _compiled_bf16(model: GoogLeNet, example: Tensor) -> Callable[[Tensor], Tensor]:
    """Our optimized graph with bf16 weights through Inductor with frozen (constant-folded, prepacked) weights."""
    import torch._inductor.config as inductor

    inductor.freezing = True
    fast = optimize_for_inference(model).to(example.device, torch.bfloat16)
    compiled = torch.compile(fast)

    @torch.no_grad()
    def run(x: Tensor) -> Tensor:
        return compiled(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()

    run(example)  # compile now, not inside the first timed round
    return run


def _inference_cases(opts: BenchmarkOptions, engines: list[str], log: Callable[[str], None]) -> list[Case]:
    import torchvision

    torch.manual_seed(0)
    device = torch.device(opts.device)
    peer = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()
    ours = create_model("torchvision", aux=False)
    ours.load_state_dict(peer.state_dict())  # same weights: the graphs differ only in how they run
    ours.eval()
    peer = peer.to(device)
    x = torch.randn(opts.batch, 3, opts.size, opts.size, device=device)
    x1 = x[:1].clone()
    flops = 2.0 * forward_macs(ours, 3, opts.size, training=False)
    peer_cl = copy.deepcopy(peer).to(memory_format=torch.channels_last)
    x_cl, x1_cl = (t.contiguous(memory_format=torch.channels_last) for t in (x, x1))
    section = f"inference, batch {opts.batch} at {opts.size} px"
    cases = [
        Case(section, "torchvision eager fp32", _torch_runner(peer, x, False), opts.batch, flops,
             _torch_runner(peer, x1, False), peer=True),
        Case(section, "torchvision eager bf16 + channels_last", _torch_runner(peer_cl, x_cl, True), opts.batch,
             flops, _torch_runner(peer_cl, x1_cl, True), peer=True),
    ]  # fmt: skip
    example = x[:2].cpu()
    calibration = [torch.randn(8, 3, opts.size, opts.size) for _ in range(4)]  # speed only: random ranges
    log("building peer engines")
    if "onnxruntime" in engines:
        e = onnxruntime_engine(peer, example)
        cases.append(Case(section, "ONNX Runtime fp32 (torchvision graph)", _engine_runner(e, x), opts.batch, flops,
                          _engine_runner(e, x1), peer=True))  # fmt: skip
    if "openvino" in engines:
        for precision in ("fp32", "bf16"):
            e = openvino_engine(peer, precision, example)
            cases.append(Case(section, f"OpenVINO {precision} (torchvision graph)", _engine_runner(e, x), opts.batch,
                              flops, _engine_runner(e, x1), peer=True))  # fmt: skip
    log("building our engines")
    for backend, precision in engine_choices(engines):
        e = build_engine(ours, backend, precision, image_size=opts.size, calibration=calibration, device=device)
        cases.append(Case(section, f"ours: {backend} {precision}", _engine_runner(e, x), opts.batch, flops,
                          _engine_runner(e, x1)))  # fmt: skip
    if opts.compile:
        log("compiling with torch.compile (Inductor)")
        run = _compiled_bf16(ours, x)
        run(x1)
        cases.append(Case(section, "ours: torch.compile bf16", _engine_runner(run, x), opts.batch, flops,
                          _engine_runner(run, x1)))  # fmt: skip
    return cases


def _train_step(  # the step's parts, as the loop holds them
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    bf16: bool,
    torchvision_outputs: bool = False,
    compiled: bool = False,
    aten: bool = False,
) -> Callable[[], object]:
    """One SGD step as `googlenet train` takes it (momentum 0.9, weight decay, aux loss 0.3, the fused SGD
    kernel). Peers get the same optimizer: the ratio measures the model, not the training loop. ``aten``: with
    ATen's max-pool, BatchNorm and convolution backward instead of the training kernels (``googlenet.kernels``)."""
    model.to(x.device).train()
    fused = x.device.type in FUSED_SGD_DEVICES
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4, fused=fused)
    loss_fn = torch.compile(training_loss) if compiled else training_loss

    def step() -> object:
        # The forward pass picks the operators; the backward follows what the forward recorded.
        layers = kernels.use_aten() if aten else contextlib.nullcontext()
        with layers, torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            if torchvision_outputs:  # torchvision returns a GoogLeNetOutputs tuple in training
                out = model(x)
                loss = F.cross_entropy(out.logits, y)
                loss = loss + AUX_LOSS_WEIGHT * (
                    F.cross_entropy(out.aux_logits1, y) + F.cross_entropy(out.aux_logits2, y)
                )
            else:
                loss, _ = loss_fn(model, x, y, aux_weight=AUX_LOSS_WEIGHT, label_smoothing=0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        return loss

    return step


def _training_batch(opts: BenchmarkOptions) -> tuple[Tensor, Tensor]:
    """Random ImageNet-shaped images (channels_last) and labels for the 224 px training section."""
    device = torch.device(opts.device)
    x = torch.randn(opts.train_batch, 3, opts.size, opts.size, device=device)
    return x.contiguous(memory_format=torch.channels_last), torch.randint(0, 1000, (opts.train_batch,), device=device)


def _training_cases(opts: BenchmarkOptions) -> list[Case]:
    import torchvision

    torch.manual_seed(0)
    section = f"training, batch {opts.train_batch} at {opts.size} px, with auxiliary heads"
    peer = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    peer = peer.to(memory_format=torch.channels_last)
    ours = create_model("torchvision", aux=True)
    ours.load_state_dict(peer.state_dict())
    ours = ours.to(memory_format=torch.channels_last)
    flops = 3 * 2.0 * forward_macs(ours, 3, opts.size, training=True)  # counted on the plain model's layers
    optimize_for_training(ours)  # as `googlenet train` does (train.speedups)
    x, y = _training_batch(opts)
    cases = [
        Case(section, "torchvision eager bf16 + channels_last",
             _train_step(peer, x, y, bf16=True, torchvision_outputs=True), opts.train_batch, flops, peer=True),
        Case(section, "ours: googlenet train path (bf16, channels_last)", _train_step(ours, x, y, bf16=True),
             opts.train_batch, flops),
        *_without_kernels(section, ours, x, y, opts.train_batch, flops),
    ]  # fmt: skip
    if opts.compile:  # what train.compile = true does: the loss function through torch.compile
        compiled = copy.deepcopy(ours)
        step = _train_step(compiled, x, y, bf16=True, compiled=True)
        step()  # compile outside the timed rounds
        cases.append(Case(section, "ours: train path + torch.compile", step, opts.train_batch, flops))
    return cases


def _without_kernels(section: str, model: GoogLeNet, x: Tensor, y: Tensor, batch: int, flops: float) -> list[Case]:
    """Our train path on ATen alone (its max-pool, BatchNorm and convolution backward): what the training kernels
    (``googlenet.kernels``) add on this device."""
    if x.device.type != "cpu":
        return []
    step = _train_step(copy.deepcopy(model), x, y, bf16=True, aten=True)
    return [Case(section, "ours without the training kernels (all ATen)", step, batch, flops)]


def _fashion_batch(opts: BenchmarkOptions) -> tuple[Tensor, Tensor]:
    """Random one-channel images and labels at the Fashion-MNIST presets' size and batch (contiguous)."""
    device = torch.device(opts.device)
    x = torch.randn(opts.fashion_batch, 1, opts.fashion_size, opts.fashion_size, device=device)
    return x, torch.randint(0, 10, (opts.fashion_batch,), device=device)


def _preset_peer(num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's googlenet at the presets' input: ``in_channels`` channels into its own 7x7/2 stem (no input
    transform), so that both networks see the same images through the same stem."""
    import torchvision
    from torchvision.models.googlenet import BasicConv2d

    peer = torchvision.models.googlenet(weights=None, num_classes=num_classes, aux_logits=True, init_weights=True)
    peer.transform_input = False
    peer.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
    return peer


def _fashion_cases(opts: BenchmarkOptions, engines: list[str]) -> list[Case]:
    """The Fashion-MNIST presets' setting (configs/fashion-mnist*.toml): the `bn` variant, one channel
    upsampled to ``fashion_size`` px (64 by default), batch 128, auxiliary heads on, bf16 and channels_last."""
    torch.manual_seed(0)
    size, batch = opts.fashion_size, opts.fashion_batch
    setting = f"{FASHION_VARIANT} variant, 1 x {size} x {size}, batch {batch}"
    section = f"Fashion-MNIST training: {setting}, with auxiliary heads"
    plain = create_model(FASHION_VARIANT, num_classes=10, in_channels=1)
    train_flops = 3 * 2.0 * forward_macs(plain, 1, size, training=True)  # counted on the plain model's layers
    # The peer's own count: torchvision's "5x5" branch is a 3x3 and its last pool 2x2 (docs/paper.md), so it
    # does less arithmetic per image than the paper's network; its share of the roof counts its own work.
    peer_layout = create_model("torchvision", num_classes=10, in_channels=1)
    peer_flops = 3 * 2.0 * forward_macs(peer_layout, 1, size, training=True)
    optimize_for_training(plain)  # all our cases run our training modules; they differ in precision and layout
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    peer = _preset_peer(10, 1).to(memory_format=torch.channels_last)
    x, y = _fashion_batch(opts)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    cases = [
        Case(section, "torchvision eager bf16 + channels_last, same stem and input",
             _train_step(peer, x_cl, y, bf16=True, torchvision_outputs=True), batch, peer_flops, peer=True),
        Case(section, "ours: eager fp32", _train_step(plain, x, y, bf16=False), batch, train_flops),
        Case(section, "ours: googlenet train path (bf16, channels_last)", _train_step(fast, x_cl, y, bf16=True), batch,
             train_flops),
        *_without_kernels(section, fast, x_cl, y, batch, train_flops),
    ]  # fmt: skip
    model = create_model(FASHION_VARIANT, num_classes=10, in_channels=1, aux=False).eval()
    flops = 2.0 * forward_macs(model, 1, size, training=False)
    calibration = [torch.randn(32, 1, size, size) for _ in range(4)]
    section = f"Fashion-MNIST inference: {setting}"
    # ONNX Runtime sits this one out: its ONNX export costs more time than the section's measurements.
    for backend, precision in engine_choices(e for e in engines if e != "onnxruntime"):
        e = build_engine(model, backend, precision, image_size=size, calibration=calibration, device=x.device)
        cases.append(Case(section, f"{backend} {precision}", _engine_runner(e, x), batch, flops,
                          _engine_runner(e, x[:1])))  # fmt: skip
    return cases


def _timed(call: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call, waiting for the GPU's queued work to finish."""
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _measure(cases: list[Case], opts: BenchmarkOptions, progress: bool) -> None:
    from tqdm import tqdm

    device = torch.device(opts.device)
    for case in cases:  # warm-up: first calls allocate, pick kernels and fill caches
        for _ in range(2 if device.type == "cuda" else 1):  # cuDNN's benchmark mode times algorithms first
            _timed(case.step, device)
            if case.single:
                _timed(case.single, device)
    bar = tqdm(total=opts.rounds * len(cases), desc="benchmark", disable=not progress, leave=False)
    for _ in range(opts.rounds):
        for case in cases:
            # OpenMP, TBB and ONNX Runtime workers spin for a while after their last task; without a pause
            # they would steal cores from whichever case runs next.
            time.sleep(opts.settle)
            base = _reset_peak(device)
            case.times.append(_timed(case.step, device))
            peak = _peak_since(base, device)
            if peak is not None:
                case.peaks.append(peak)
            if case.single:
                single = [_timed(case.single, device) for _ in range(opts.latency_repeats)]
                case.latencies.append(statistics.median(single))
            bar.update()
    bar.close()


def _rows(cases: list[Case], roof: float) -> list[Row]:
    rows = []
    for section, group in itertools.groupby(cases, key=lambda c: c.section):
        members = list(group)
        speed = {c.name: c.images / statistics.median(c.times) for c in members}
        peers = [c for c in members if c.peer]
        reference = max(peers, key=lambda c: speed[c.name]) if peers else members[0]
        for c in members:
            gflops = speed[c.name] * c.flops_per_image / 1e9
            rows.append(
                Row(
                    section=section,
                    name=c.name,
                    peer=c.peer,
                    images_per_second=speed[c.name],
                    latency_ms=1000 * statistics.median(c.latencies) if c.latencies else None,
                    peak_mib=max(c.peaks) if c.peaks else None,
                    gflops=gflops,
                    roof_share=gflops / roof if roof > 0 else 0.0,
                    ratio=speed[c.name] / speed[reference.name],
                    reference=reference.name,
                )
            )
    return rows


def agreement_on_test(checkpoint: str, engines: list[str], log: Callable[[str], None]) -> list[Agreement]:
    """Each reduced-precision or external engine against our fp32 PyTorch model on the checkpoint's test split:
    accuracy and the share of identical top-1 answers. int8 is calibrated as `evaluate` does."""
    from googlenet.config import config_from_dict
    from googlenet.data import eval_split
    from googlenet.evaluation.evaluate import calibration_batches
    from googlenet.run.checkpoint import load_checkpoint, model_from_checkpoint

    payload = load_checkpoint(checkpoint)
    model, prep, _ = model_from_checkpoint(payload)
    config = config_from_dict(payload["config"])
    split = eval_split(config.data, prep, "test", config.train.seed)
    calibration = calibration_batches(config, prep)
    predictions: dict[str, Tensor] = {}
    labels: Tensor | None = None
    for backend, precision in engine_choices(engines):
        engine = build_engine(
            model, backend, precision, image_size=prep.image_size, calibration=calibration, device="cpu"
        )
        log(f"agreement: running {engine.name} over the test split")
        outputs, ys = zip(*((engine(x).argmax(1), y) for x, y in split.epoch(0)), strict=True)
        predictions[engine.name] = torch.cat(outputs)
        labels = torch.cat(ys)
    assert labels is not None
    reference = predictions["torch fp32"]
    return [
        Agreement(name, float((p == labels).float().mean()), float((p == reference).float().mean()), len(labels))
        for name, p in predictions.items()
    ]


# Operator kinds for the profile, matched in order against the lower-cased names of ATen's operators and of
# the training kernels' autograd functions (googlenet.kernels: _MaxPool, _BatchNormReLU, ...).
PROFILE_KINDS = (
    ("convolution and linear (forward, backward, and their matrix products)", ("conv", "addmm", "mm")),
    ("BatchNorm (forward and backward)", ("batch_norm", "batchnorm")),
    ("max-pool (forward and backward)", ("max_pool", "maxpool")),
    ("ReLU (forward and backward)", ("relu", "threshold", "clamp_min")),
    ("concatenation, split, copies", ("cat", "split", "copy", "narrow")),
    ("optimizer and gradient sums", ("foreach", "add", "mul", "lerp", "sgd", "zero", "fill")),
)
KERNEL_EVENTS = ("_MaxPool", "_BatchNormReLU", "_Conv2dMatmul")  # googlenet.kernels' autograd functions


def profile_training_step(opts: BenchmarkOptions) -> dict[str, float]:
    """Share of our training step's operator time by kind at the Fashion-MNIST presets' setting (torch.profiler,
    two steps after a warm-up): how much is matrix work a faster kernel could shrink, and how much is
    memory-bound."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    x, y = _fashion_batch(opts)
    x = x.contiguous(memory_format=torch.channels_last)
    model = create_model(FASHION_VARIANT, num_classes=10, in_channels=1).to(memory_format=torch.channels_last)
    step = _train_step(optimize_for_training(model), x, y, bf16=True)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        step()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if not event.key.startswith(("aten::", *KERNEL_EVENTS)):
            continue  # Python and autograd-engine frames: their own time is bookkeeping around these
        op = event.key.removeprefix("aten::").lower()
        kind = next((k for k, words in PROFILE_KINDS if any(w in op for w in words)), "other")
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {k: v / whole for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def _done() -> None:
    """Stands in for a measured case's step once its engine is released."""


class BenchmarkError(GoogLeNetError):
    """A benchmark that cannot run as asked."""


def run_benchmark(
    opts: BenchmarkOptions, *, progress: bool = False, log: Callable[[str], None] = lambda _: None
) -> BenchmarkReport:
    unknown = set(opts.sections) - set(SECTIONS)
    if unknown or not opts.sections:
        raise BenchmarkError(
            f"sections must be a non-empty list of {', '.join(SECTIONS)}; got {', '.join(opts.sections) or 'none'}"
        )
    smallest = get_variant("torchvision").min_input_size  # the --size sections run the torchvision layout
    if opts.size < smallest:
        raise BenchmarkError(f"--size {opts.size} is below the torchvision graph's smallest input, {smallest} px")
    device = torch.device(opts.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchmarkError("--device cuda, but no CUDA device is available")
        torch.backends.cudnn.benchmark = True
    engines = [e for e in installed_backends() if e != "torch" and (not opts.engines or e in opts.engines)]
    engines = engines if device.type == "cpu" else []  # ONNX Runtime and OpenVINO run on the CPU here
    # First, so that a bad checkpoint fails before minutes of timing; it does not overlap the timed rounds.
    agreement = agreement_on_test(opts.checkpoint, installed_backends(), log) if opts.checkpoint else []
    # Each section is built and measured on its own, interleaved with the roof: one runtime's leftover threads
    # and memory must not tilt another section's comparison, and engines are freed before the next section.
    roof = _matmul_cases(opts.roof_size, device)
    builders: dict[str, Callable[[], list[Case]]] = {
        "inference": lambda: _inference_cases(opts, engines, log),
        "training": lambda: _training_cases(opts),
        "fashion": lambda: _fashion_cases(opts, engines),
    }
    measured: list[Case] = []
    for name in (s for s in SECTIONS if s in opts.sections):
        cases = builders[name]()
        log(f"{name}: measuring {len(cases)} cases and the matmul roof, {opts.rounds} interleaved rounds")
        _measure(roof + cases, opts, progress)
        measured += [dataclasses.replace(c, step=_done, single=None) for c in cases]  # keep timings, free engines
        del cases
        gc.collect()
    roofs = {c.name.split()[1]: c.flops_per_image / statistics.median(c.times) / 1e9 for c in roof}
    rows = _rows(measured, roofs["bf16"])
    shares = profile_training_step(opts) if opts.profile else {}
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else machine_name()
    return BenchmarkReport(machine, torch.get_num_threads(), _versions(), asdict(opts), roofs, rows, agreement, shares)


def format_report(report: BenchmarkReport) -> str:
    """Markdown: one table per section, ratios against the section's strongest peer."""
    o = report.options
    lines = [
        f"{report.machine}, {report.threads} threads; " + ", ".join(f"{k} {v}" for k, v in report.versions.items()),
        f"{report.date}; median of {o['rounds']} interleaved rounds; batch-1 latency: median of "
        f"{o['latency_repeats']} calls per round",
        "matrix-multiply roof (torch.matmul, "
        + f"{o['roof_size']}^3): "
        + ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in report.roof_gflops.items()),
    ]
    for section, group in itertools.groupby(report.rows, key=lambda r: r.section):
        members = list(group)
        lines += [
            "",
            f"**{section}** (ratios against {members[0].reference})",
            "",
            "| case | img/s | ratio | batch-1 ms | peak MiB | GFLOP/s | of bf16 roof |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in members:
            latency = f"{r.latency_ms:.2f}" if r.latency_ms is not None else "–"
            peak = f"{r.peak_mib:,.0f}" if r.peak_mib is not None else "–"
            name = f"{r.name} (peer)" if r.peer else f"**{r.name}**"
            lines.append(
                f"| {name} | {r.images_per_second:,.1f} | {r.ratio:.2f}x | {latency} | {peak} | "
                f"{r.gflops:,.0f} | {r.roof_share:.0%} |"
            )
    if report.agreement:
        lines += [
            "",
            f"**agreement with our fp32 model** ({o['checkpoint']}, test split, {report.agreement[0].images:,} images)",
            "",
            "| engine | top-1 | same top-1 as fp32 |",
            "|---|---:|---:|",
            *(f"| {a.engine} | {a.top1:.4f} | {a.agreement:.2%} |" for a in report.agreement),
        ]
    if report.profile:
        lines += [
            "",
            f"**where our training step's time goes** (torch.profiler, {FASHION_VARIANT} variant, batch "
            f"{o['fashion_batch']} at {o['fashion_size']} px, bf16, channels_last)",
            "",
            "| operators | share of operator time |",
            "|---|---:|",
            *(f"| {kind} | {share:.0%} |" for kind, share in report.profile.items()),
        ]
    return "\n".join(lines)
