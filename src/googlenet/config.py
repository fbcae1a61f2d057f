"""Typed training configuration: TOML presets plus `section.key=value` overrides, validated by name.

Every key has a type and a range; an unknown section or key, a value of the wrong type or out of range
raises ConfigError naming the key, so a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from googlenet.errors import GoogLeNetError
from googlenet.model import AUX_LOSS_WEIGHT, list_models


class ConfigError(GoogLeNetError):
    """A configuration file or override that cannot be used."""


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"  # "fashion-mnist", "folder" or "shards" (packed by `googlenet data pack`)
    # fashion-mnist: where its files are kept; folder: a folder with train/ (and val/); shards: the packed folder
    root: str = "data"
    image_size: int = 28  # what the model is validated and tested at (and trained at, without start_size)
    # Progressive resizing: training starts at this size and grows in 8-px steps to image_size, which it
    # reaches when the learning-rate decay is grow_until of the way through; 0 = off.
    start_size: int = 0
    grow_until: float = 0.5
    val_fraction: float = 1 / 12  # held out of the training images, seeded; 5,000 of Fashion-MNIST's 60,000
    train_subset: int = 0  # use only this many training images (0 = all): for quick demos
    batch_size: int = 128
    eval_batch_size: int = 512
    augment: str = "flip-crop"  # "none", "flip", "flip-crop" (small images) or "paper" / "modern" (folders)
    crop_padding: int = 2
    # Random erasing (Zhong et al., 2017): the chance that a training image has a random rectangle (2%-33% of
    # its area, aspect 0.3-3.3) set to the mean pixel; 0 = off. Works with every augment setting.
    erase: float = 0.0
    # How Fashion-MNIST's training images are mirrored with augment = "flip" / "flip-crop": "random" (a coin per
    # image per epoch) or "alternate" (a coin per image in the first epoch, then every image mirrored on every
    # other epoch, as the airbench CIFAR-10 records do: each pair of epochs shows both sides of every image).
    flip: str = "random"
    workers: int = 2  # image folders and shards; Fashion-MNIST is batched in memory


@dataclass
class ModelConfig:
    name: str = "small"
    aux: bool = True
    aux_weight: float = AUX_LOSS_WEIGHT  # the paper's 0.3 for each auxiliary loss; 0 trains without them
    in_channels: int = 0  # 0: from the data (1 for Fashion-MNIST, 3 for folders)
    init: str = ""  # fine-tuning: start from this checkpoint's weights; the classifier is reset if classes differ
    freeze_features: bool = False  # fine-tuning: train only the classifier (and auxiliary heads)
    dropout: float = -1.0  # the main classifier's dropout; negative = the variant's own (0.4 paper, 0.2 torchvision)


@dataclass
class OptimConfig:
    # "sgd": SGD with Nesterov momentum for every parameter. "muon": Muon (orthogonalised momentum,
    # torch.optim.Muon) for the backbone's convolution and linear weights, each taken as its (out, fan-in)
    # matrix; SGD as above for the rest (BatchNorm, biases, the classifiers), which Muon cannot take.
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    backbone_lr_mult: float = 1.0  # discriminative fine-tuning: the features' lr is lr x this
    # optim.name = "muon": the Muon weights' peak learning rate (on the same schedule as lr), momentum (Nesterov)
    # and decoupled weight decay (each step multiplies the weights by 1 - its lr x this).
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    # Newton-Schulz iterations per Muon step (torch's ns_steps): fewer leave the update less orthogonal but
    # cost less (on 2 CPU cores the iterations are about a quarter of a batch-128 step at 64 px).
    muon_ns_steps: int = 5


@dataclass
class ScheduleConfig:
    name: str = "onecycle"  # "paper", "step", "cosine", "onecycle", "constant"
    warmup_epochs: float = 0.3
    step_epochs: float = 8.0  # paper / step: decay every this many epochs
    gamma: float = 0.96  # paper: 4% less every 8 epochs; step: the factor
    min_lr_ratio: float = 0.0  # cosine / onecycle: final lr as a fraction of the peak


@dataclass
class TrainConfig:
    epochs: int = 5
    # A wall-clock budget: the run measures its speed and plans as many steps as fit (at most `epochs`), the
    # schedule included; 0 = no budget.
    max_minutes: float = 0.0
    replan: bool = True  # with a budget: refit the rest of the schedule to the speed measured at each epoch end
    budget_test_views: int = 2  # the budget keeps time for a test evaluation at this many views (2: flip TTA)
    log_every_steps: int = 50  # training loss, accuracy and lr to steps.jsonl and TensorBoard; 0 = epoch ends only
    max_steps: int = 0  # stop after this many optimizer steps in total; 0 = run all epochs
    save_every_steps: int = 0  # also write last.pt every this many steps (survives kill -9); 0 = epoch ends
    seed: int = 0
    precision: str = "bf16"  # "fp32" or "bf16" (autocast on CPU, AMP on CUDA)
    channels_last: bool = True
    compile: bool = False
    # torch.compile's mode when train.compile is on: "reduce-overhead" also records the step in CUDA graphs
    # (on a GPU a batch-128 step is short enough for kernel launches to rule it); the CPU ignores the graphs.
    compile_mode: str = "default"
    speedups: bool = True  # exact module swaps for a faster step (googlenet.speedups); false: the plain model
    ema_decay: float = 0.999  # exponential moving average of the weights; 0 = off
    device: str = "auto"  # "auto", "cpu", "cuda"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    deterministic: bool = False
    global_batch: int = (
        0  # images per optimizer step, a multiple of data.batch_size (gradient accumulation); 0 = one batch
    )
    sync_bn: bool = False  # torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("fashion-mnist", "folder", "shards"),
    "data.augment": ("none", "flip", "flip-crop", "paper", "modern"),
    "data.flip": ("random", "alternate"),
    "optim.name": ("sgd", "muon"),
    "schedule.name": ("paper", "step", "cosine", "onecycle", "constant"),
    "train.precision": ("fp32", "bf16"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune"),
}
# (low, high, low inclusive): the range each numeric key must fall in.
RANGES: dict[str, tuple[float, float, bool]] = {
    "data.image_size": (8, 4096, True),
    "data.start_size": (0, 4096, True),
    "data.grow_until": (0, 1, False),
    "data.val_fraction": (0, 0.9, True),
    "data.train_subset": (0, math.inf, True),
    "data.batch_size": (1, 65536, True),
    "data.eval_batch_size": (1, 65536, True),
    "data.crop_padding": (0, 64, True),
    "data.erase": (0, 1, True),
    "data.workers": (0, 64, True),
    "model.aux_weight": (0, 10, True),
    "model.in_channels": (0, 64, True),
    "model.dropout": (-1, 0.99, True),
    "optim.lr": (0, 1e6, False),
    "optim.momentum": (0, 1, True),
    "optim.weight_decay": (0, 1, True),
    "optim.label_smoothing": (0, 1, True),
    "optim.grad_clip": (0, math.inf, True),
    "optim.backbone_lr_mult": (0, 100, True),
    "optim.muon_lr": (0, 1e6, False),
    "optim.muon_momentum": (0, 1, False),
    "optim.muon_weight_decay": (0, 1e3, True),
    "optim.muon_ns_steps": (1, 99, True),
    "schedule.warmup_epochs": (0, 1000, True),
    "schedule.step_epochs": (0, 1000, False),
    "schedule.gamma": (0, 1, False),
    "schedule.min_lr_ratio": (0, 1, True),
    "train.epochs": (1, 100000, True),
    "train.max_minutes": (0, math.inf, True),
    "train.budget_test_views": (0, 1000, True),
    "train.log_every_steps": (0, math.inf, True),
    "train.max_steps": (0, math.inf, True),
    "train.save_every_steps": (0, math.inf, True),
    "train.seed": (0, 2**63, True),
    "train.ema_decay": (0, 1, True),
    "train.threads": (0, 1024, True),
    "train.global_batch": (0, 2**31, True),
}


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Check one value against its declared type; ints are accepted where floats are expected."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be a whole number, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _validate(key: str, value: Any) -> None:
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key} must be one of {', '.join(CHOICES[key])}; got {value!r}")
    if key == "model.name" and value not in list_models():
        raise ConfigError(f"model.name must be one of {', '.join(list_models())}; got {value!r}")
    if key in RANGES:
        low, high, inclusive = RANGES[key]
        too_low = value < low if inclusive else value <= low
        if too_low or value > high:
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            raise ConfigError(f"{key} must be {bound} and <= {high:g}; got {value!r}")


def _apply(config: Config, key: str, value: Any) -> None:
    section_name, _, name = key.partition(".")
    sections = {f.name for f in fields(Config)}
    if section_name not in sections or not name:
        raise ConfigError(f"unknown config section in {key!r}; sections are {', '.join(sorted(sections))}")
    section = getattr(config, section_name)
    hints = get_type_hints(type(section))
    if name not in hints:
        raise ConfigError(f"unknown config key {key!r}; {section_name} has {', '.join(sorted(hints))}")
    coerced = _coerce(key, value, hints[name])
    _validate(key, coerced)
    setattr(section, name, coerced)


def _flatten(table: dict[str, Any], source: str) -> list[tuple[str, Any]]:
    items = []
    for section, values in table.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section!r} must be a [section] table, got {values!r}")
        items += [(f"{section}.{key}", value) for key, value in values.items()]
    return items


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=0.05' -> ('optim.lr', 0.05). Values are TOML ('true', '3', '"cosine"'); a bare word is a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word such as cosine
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file (if any), then the overrides, each checked by key."""
    config = Config()
    if path is not None:
        path = Path(path)
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read config file {path}: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
        for key, value in _flatten(table, str(path)):
            _apply(config, key, value)
    apply_overrides(config, overrides or [])
    return config


def apply_overrides(config: Config, overrides: list[str], allowed: frozenset[str] | None = None) -> None:
    """Apply `section.key=value` strings in order; with ``allowed``, other keys are refused by name."""
    for text in overrides:
        key, value = parse_override(text)
        if allowed is not None and key not in allowed:
            raise ConfigError(f"{key} cannot be changed when resuming; only {', '.join(sorted(allowed))} can")
        _apply(config, key, value)


# Options that were measured, lost on the seeds tried and were removed (docs/results.md): checkpoints written
# while they existed still name them.
RETIRED_KEYS = frozenset({"optim.lookahead_steps", "optim.lookahead_alpha"})


def config_from_dict(table: dict[str, Any]) -> Config:
    """Rebuild a Config saved in a checkpoint, with the same checks as a file (retired options are skipped)."""
    config = Config()
    for key, value in _flatten(table, "checkpoint config"):
        if key not in RETIRED_KEYS:
            _apply(config, key, value)
    return config
