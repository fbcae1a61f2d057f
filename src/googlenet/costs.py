"""Why the 1x1 reductions matter: naive vs reduced Inception cost, recomputed from live modules.

Every figure is measured on modules built here (on the meta device, so no arithmetic is spent): the
naive module of the paper's Figure 2a for each Inception module of the network, the two textbook
calculations of what a 1x1 reduction saves, VGG-16 from torchvision for the parameter ratio, and the
parameter totals that circulate for GoogLeNet.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torchvision
from torch import nn

from googlenet.macs import profile_modules, sum_macs
from googlenet.model import ConvBlock, GoogLeNet, Inception, NaiveInception, count_parameters, create_model

BRANCHES = ("branch1", "branch2", "branch3", "branch4")
BRANCH_LABELS = ("1x1", "3x3", "5x5", "pool")


@dataclass
class ModuleCost:
    """One Inception module at its place in the network, naive (Figure 2a) vs reduced (Figure 2b)."""

    name: str
    input_shape: list[int]  # (C, H, W)
    naive_branch_macs: list[int]  # 1x1, 3x3, 5x5, pool
    reduced_branch_macs: list[int]
    naive_params: int
    reduced_params: int
    naive_out_channels: int
    reduced_out_channels: int

    @property
    def naive_macs(self) -> int:
        return sum(self.naive_branch_macs)

    @property
    def reduced_macs(self) -> int:
        return sum(self.reduced_branch_macs)


@dataclass
class WorkedExample:
    """A textbook hand calculation of what a 1x1 reduction saves, redone on live layers."""

    description: str
    naive: int
    reduced: int
    unit: str  # "multiply-adds" or "weights"
    quoted: str  # the figure as usually quoted, for comparison


@dataclass
class PublishedCount:
    value: int
    what: str


@dataclass
class CostReport:
    variant: str
    input_size: int
    modules: list[ModuleCost]
    examples: list[WorkedExample]
    vgg16_params: int
    googlenet_params: int
    published: list[PublishedCount]

    @property
    def vgg16_ratio(self) -> float:
        return self.vgg16_params / self.googlenet_params


def _weights(module: nn.Module) -> int:
    """Conv weights only (no biases, no BatchNorm): the unit of the usual hand calculation."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


def _branch_macs(module: nn.Module, input_shape: tuple[int, int, int]) -> list[int]:
    records = profile_modules(module, input_shape)
    return [sum_macs(records, b) for b in BRANCHES]


def module_costs(model: GoogLeNet, input_size: int) -> list[ModuleCost]:
    """Naive vs reduced cost of every Inception module of ``model`` (on the meta device) at its input."""
    records = profile_modules(model, (model.in_channels, input_size, input_size))
    inputs = {r.name: r.input_shape for r in records}
    costs = []
    for name, module in model.named_children():
        if not isinstance(module, Inception):
            continue
        shape = inputs[name]
        c, h, w = shape
        spec = module.spec
        with torch.device("meta"):
            naive = NaiveInception(c, spec.ch1x1, spec.ch3x3, spec.ch5x5)
        costs.append(
            ModuleCost(
                name=name,
                input_shape=[c, h, w],
                naive_branch_macs=_branch_macs(naive, (c, h, w)),
                reduced_branch_macs=_branch_macs(module, (c, h, w)),
                naive_params=count_parameters(naive),
                reduced_params=count_parameters(module),
                naive_out_channels=naive.out_channels,
                reduced_out_channels=module.out_channels,
            )
        )
    return costs


def worked_examples() -> list[WorkedExample]:
    """Two hand calculations of what a 1x1 reduction saves: the 5x5 branches of Inception 3a and 4b."""
    with torch.device("meta"):
        naive_5x5 = ConvBlock(192, 32, 5, padding=2)
        reduced_5x5 = nn.Sequential(ConvBlock(192, 16, 1), ConvBlock(16, 32, 5, padding=2))
        naive_512 = ConvBlock(512, 64, 5, padding=2)
        reduced_512 = nn.Sequential(ConvBlock(512, 24, 1), ConvBlock(24, 64, 5, padding=2))
    shape = (192, 28, 28)
    return [
        WorkedExample(
            "28x28x192 input -> 32 5x5 filters, naive vs through 16 1x1 filters",
            naive=sum_macs(profile_modules(naive_5x5, shape)),
            reduced=sum_macs(profile_modules(reduced_5x5, shape)),
            unit="multiply-adds",
            quoted="~120M vs ~12.4M",
        ),
        WorkedExample(
            "512 input channels -> 64 5x5 filters, naive vs through 24 1x1 filters",
            naive=_weights(naive_512),
            reduced=_weights(reduced_512),
            unit="weights",
            quoted="819,200 vs 50,688",
        ),
    ]


def published_counts() -> list[PublishedCount]:
    """The totals that circulate for 'GoogLeNet', each derived from a live model to show what it counts."""
    with torch.device("meta"):
        paper = create_model("paper", aux=False)
        paper_aux = create_model("paper")
        torchvision_net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    no_stem_reduction = count_parameters(paper) - count_parameters(paper.conv2)
    return [
        PublishedCount(count_parameters(paper), "the paper's network, without the auxiliary heads"),
        PublishedCount(count_parameters(paper_aux), "the paper's network with both auxiliary heads"),
        PublishedCount(
            no_stem_reduction,
            f"the paper's network less stage 2's 64-channel 1x1 reduction ({count_parameters(paper.conv2):,} "
            "params): a count that forgets the depth-2 stem row",
        ),
        PublishedCount(
            count_parameters(torchvision_net),
            "torchvision's googlenet: BatchNorm instead of conv biases and LRN, 3x3 instead of 5x5 convs",
        ),
    ]


def cost_report(name: str = "paper", input_size: int = 224) -> CostReport:
    with torch.device("meta"):
        model = create_model(name, aux=False)
        vgg16 = torchvision.models.vgg16(weights=None)
    return CostReport(
        variant=name,
        input_size=input_size,
        modules=module_costs(model, input_size),
        examples=worked_examples(),
        vgg16_params=count_parameters(vgg16),
        googlenet_params=count_parameters(model),
        published=published_counts(),
    )


# ---------------------------------------------------------------------------------------------- formats


def _m(macs: int) -> str:
    return f"{macs / 1e6:,.1f}M"


COST_HEADER = [
    "module",
    "input",
    *(f"naive {b}" for b in BRANCH_LABELS),
    "naive total",
    *(f"reduced {b}" for b in BRANCH_LABELS),
    "reduced total",
    "saving",
    "naive out C",
    "params naive -> reduced",
]


def _cost_row(m: ModuleCost) -> list[str]:
    c, h, w = m.input_shape
    return [
        m.name.removeprefix("inception"),
        f"{h}x{w}x{c}",
        *map(_m, m.naive_branch_macs),
        _m(m.naive_macs),
        *map(_m, m.reduced_branch_macs),
        _m(m.reduced_macs),
        f"{m.naive_macs / m.reduced_macs:.1f}x",
        str(m.naive_out_channels),
        f"{m.naive_params:,} -> {m.reduced_params:,}",
    ]


def format_text(report: CostReport, markdown: bool = False) -> str:
    header, rows = COST_HEADER, [_cost_row(m) for m in report.modules]
    total_naive = sum(m.naive_macs for m in report.modules)
    total_reduced = sum(m.reduced_macs for m in report.modules)
    title = (
        f"Inception modules of '{report.variant}' at {report.input_size} px: multiply-adds per image, "
        f"naive (Figure 2a) vs with 1x1 reductions (Figure 2b)"
    )
    if markdown:
        out = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        out = [title, "", "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
        out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    bullet = "- " if markdown else "  "
    out += [
        "",
        f"All nine modules: {_m(total_naive)} naive vs {_m(total_reduced)} reduced "
        f"({total_naive / total_reduced:.1f}x). A naive module's pool branch passes every input channel on, so "
        "widths only grow (see 'naive out C').",
        "",
        "Worked examples (the 5x5 branches of Inception 3a and 4b, as usually calculated by hand; recomputed on "
        "live layers):",
    ]
    for e in report.examples:
        out.append(
            f"{bullet}{e.description}: {e.naive:,} vs {e.reduced:,} {e.unit} "
            f"({e.naive / e.reduced:.1f}x fewer; usually quoted as {e.quoted})"
        )
    out += [
        "",
        f"Parameters vs VGG-16: {report.vgg16_params:,} / {report.googlenet_params:,} = "
        f"{report.vgg16_ratio:.1f}x fewer (the paper itself compares with AlexNet: 12x fewer parameters).",
        "",
        "Published parameter counts, each recomputed from a live model:",
    ]
    out += [f"{bullet}{p.value:,}: {p.what}" for p in report.published]
    out.append(
        f"{bullet}the paper's Table 1 gives conv1 2.7K params, but a 7x7 conv from 3 to 64 channels has "
        f"7 x 7 x 3 x 64 = {7 * 7 * 3 * 64:,} weights (see `googlenet summary`)."
    )
    return "\n".join(out)


def format_json(report: CostReport) -> str:
    payload = asdict(report)
    payload["vgg16_ratio"] = report.vgg16_ratio
    for m, raw in zip(report.modules, payload["modules"], strict=True):
        raw["naive_macs"] = m.naive_macs
        raw["reduced_macs"] = m.reduced_macs
    return json.dumps(payload, indent=2)
