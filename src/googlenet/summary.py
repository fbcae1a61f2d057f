"""The paper's Table 1, recomputed from a live model by forward hooks, beside the published values.

Nothing here is a hard-coded copy of the table except the paper's own printed params/ops columns, kept
as printed ("2.7K", "34M") so the report can show where they disagree with the network they describe.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from typing import cast

import torch
from torch import nn

from googlenet.macs import LayerProfile, profile_modules, sum_macs
from googlenet.model import AuxHead, ConvBlock, GoogLeNet, Inception, NaiveInception, create_model

# The params and ops columns of the paper's Table 1, as printed. The paper's K for parameters is 1024
# (the 3x3 stem row: 64 + 110,592 = 114,688 weights = 112 x 1024; the classifier: 1,024,000 = 1000 x 1024);
# its M for ops is 10^6 (Inception 3a: 163,328 weights x 28 x 28 = 128,049,152 multiply-adds).
PAPER_TABLE1: dict[str, tuple[str, str]] = {
    "conv1": ("2.7K", "34M"),
    "conv2": ("112K", "360M"),  # the paper's single "convolution 3x3/1, depth 2" row: our conv2 + conv3
    "inception3a": ("159K", "128M"),
    "inception3b": ("380K", "304M"),
    "inception4a": ("364K", "73M"),
    "inception4b": ("437K", "88M"),
    "inception4c": ("463K", "100M"),
    "inception4d": ("580K", "119M"),
    "inception4e": ("840K", "170M"),
    "inception5a": ("1072K", "54M"),
    "inception5b": ("1388K", "71M"),
    "fc": ("1000K", "1M"),
}
PAPER_TOTAL_OPS_TEXT = "1.5 billion multiply-adds at inference (section 5)"
# A paper value further than this from the computed one is flagged in the notes, unless the gap is within
# the rounding of the printed figure ("1M" stands for anything from 0.5M to 1.5M).
DISAGREEMENT = 0.02


def paper_params(text: str) -> int:
    """'159K' -> 162,816: the paper's parameter counts are in units of 1024."""
    return round(float(text.rstrip("K")) * 1024)


def paper_ops(text: str) -> int:
    """'128M' -> 128,000,000: the paper's operation counts are in units of 10^6."""
    return round(float(text.rstrip("M")) * 1_000_000)


def _rounding(text: str) -> float:
    """Half a unit of the printed figure's last digit, in the figure's own units: '2.7K' -> 0.05 x 1024."""
    unit = 1024 if text.endswith("K") else 1_000_000
    digits = text[:-1]
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return 0.5 * 10**-decimals * unit


def disagrees(value: int, paper_text: str, paper_value: int) -> bool:
    """Whether a computed value contradicts the paper's printed figure beyond rounding and DISAGREEMENT."""
    return abs(value - paper_value) > max(DISAGREEMENT * paper_value, _rounding(paper_text))


@dataclass
class SummaryRow:
    """One row of Table 1 as computed from the live model."""

    name: str
    type: str
    patch: str
    output_shape: list[int]  # (C, H, W) for feature maps, (classes,) for logits
    depth: int
    n1x1: int | None
    n3x3_reduce: int | None
    n3x3: int | None
    n5x5_reduce: int | None
    n5x5: int | None
    pool_proj: int | None
    params: int
    macs: int
    paper_params: int | None
    paper_macs: int | None
    paper_params_text: str | None
    paper_macs_text: str | None
    train_only: bool

    @property
    def params_diff(self) -> float | None:
        return _relative(self.params, self.paper_params)

    @property
    def macs_diff(self) -> float | None:
        return _relative(self.macs, self.paper_macs)


@dataclass
class Summary:
    variant: str
    input_size: int
    in_channels: int
    rows: list[SummaryRow]
    notes: list[str]

    @property
    def inference_rows(self) -> list[SummaryRow]:
        return [r for r in self.rows if not r.train_only]

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.inference_rows)

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.inference_rows)

    @property
    def total_params_with_aux(self) -> int:
        return sum(r.params for r in self.rows)


def _relative(value: int, reference: int | None) -> float | None:
    if reference is None or reference == 0:
        return None
    return (value - reference) / reference


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _depth(module: nn.Module) -> int:
    """Layers with weights along the longest path: what the paper's depth column counts."""
    if isinstance(module, (Inception, NaiveInception)):
        return max(_depth(b) for b in (module.branch1, module.branch2, module.branch3, module.branch4))
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())


def _patch(module: nn.Module, record: LayerProfile) -> str:
    if isinstance(module, ConvBlock):
        module = module.conv
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        k, s = module.kernel_size, module.stride
        kh, kw = (k, k) if isinstance(k, int) else k
        sh = s if isinstance(s, int) else s[0]
        return f"{kh}x{kw}/{sh}"
    if isinstance(module, nn.AdaptiveAvgPool2d):
        # Over the whole map: the paper's 7x7/1 at 224 px.
        return f"{record.input_shape[1]}x{record.input_shape[2]}/1"
    if isinstance(module, nn.LocalResponseNorm):
        return f"size {module.size}"
    return ""


def _type(name: str, module: nn.Module) -> str:
    if isinstance(module, ConvBlock):
        return "convolution"
    if isinstance(module, Inception):
        return f"inception ({name.removeprefix('inception')})"
    if isinstance(module, nn.MaxPool2d):
        return "max pool"
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
        return "avg pool"
    if isinstance(module, nn.LocalResponseNorm):
        return "local response norm"
    if isinstance(module, nn.Dropout):
        return f"dropout ({module.p:.0%})"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, AuxHead):
        return "auxiliary classifier"
    return type(module).__name__


def _groups(model: GoogLeNet) -> list[tuple[str, list[str]]]:
    """Table 1's rows as groups of the model's top-level children, in execution order. The paper folds
    the 1x1 reduction conv2 into the 3x3 conv3 row; Identity placeholders (LRN in BN variants, the small
    stem's missing pool) are not layers and get no row."""
    groups: list[tuple[str, list[str]]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Identity):
            continue
        if name == "conv3" and groups and groups[-1][0] == "conv2":
            groups[-1][1].append(name)
            continue
        groups.append((name, [name]))
    return groups


def summarize(model: GoogLeNet, input_size: int | None = None) -> Summary:
    """Table 1 for ``model`` at ``input_size`` px (the variant's default if None). The model is profiled
    as it is; pass one built on the meta device to spend no arithmetic."""
    size = input_size or model.spec.default_input_size
    device = next(model.parameters()).device
    records = profile_modules(model, (model.in_channels, size, size), lambda _, x: model.forward_train(x), device)
    last_call = {r.name: r for r in records}
    compare_macs = size == 224 and not model.spec.small_stem
    rows: list[SummaryRow] = []
    for name, members in _groups(model):
        first = getattr(model, members[0])
        last = getattr(model, members[-1])
        record = last_call[members[-1]]
        filters = _filter_counts(first) if isinstance(first, Inception) else None
        params = sum(_count(getattr(model, m)) for m in members)
        macs = sum(sum_macs(records, m) for m in members)
        depth = sum(_depth(getattr(model, m)) for m in members)
        # The small stem's conv1 is a different layer (3x3/1), so the paper's conv1 row does not apply.
        paper = None if model.spec.small_stem and name == "conv1" else PAPER_TABLE1.get(name)
        reduce3 = first.conv.out_channels if name == "conv2" and len(members) == 2 else None
        rows.append(
            SummaryRow(
                name="+".join(members),
                type=_type(name, first),
                patch=_patch(last, record),
                output_shape=list(record.output_shape),
                depth=depth,
                n1x1=filters[0] if filters else None,
                n3x3_reduce=filters[1] if filters else reduce3,
                n3x3=filters[2] if filters else (last.conv.out_channels if reduce3 else None),
                n5x5_reduce=filters[3] if filters else None,
                n5x5=filters[4] if filters else None,
                pool_proj=filters[5] if filters else None,
                params=params,
                macs=macs,
                paper_params=paper_params(paper[0]) if paper else None,
                paper_macs=paper_ops(paper[1]) if paper and compare_macs else None,
                paper_params_text=paper[0] if paper else None,
                paper_macs_text=paper[1] if paper and compare_macs else None,
                train_only=isinstance(first, AuxHead),
            )
        )
    return Summary(model.variant, size, model.in_channels, rows, _notes(model, rows, compare_macs))


def _filter_counts(module: Inception) -> tuple[int, int, int, int, int, int]:
    """The six filter-count columns, read off the module's layers (not its spec)."""

    def width(block: nn.Module) -> int:
        return cast(ConvBlock, block).conv.out_channels

    return (
        width(module.branch1),
        width(module.branch2[0]),
        width(module.branch2[1]),
        width(module.branch3[0]),
        width(module.branch3[1]),
        width(module.branch4[1]),
    )


def _notes(model: GoogLeNet, rows: list[SummaryRow], compared_macs: bool) -> list[str]:
    notes = [
        "params: every learnable tensor of the live layer (weights, biases, BatchNorm); "
        "ops: multiply-adds for one image, counted by forward hooks on each conv and linear layer.",
        "The paper's K is 1024 for params (112K = 114,688 weights of the 3x3 stem row; 1000K = 1,024,000 "
        "classifier weights) and its M is 10^6 for ops.",
    ]
    # Per-row disagreements expose the paper's mistakes only where the layers are the paper's layers.
    paper_layers = model.spec.five_by_five_kernel == 5
    for row in rows if paper_layers else []:
        for what, diff, ours, text, theirs in (
            ("params", row.params_diff, row.params, row.paper_params_text, row.paper_params),
            ("ops", row.macs_diff, row.macs, row.paper_macs_text, row.paper_macs),
        ):
            if diff is not None and text and theirs and disagrees(ours, text, theirs):
                notes.append(f"{row.name}: the paper prints {text} {what}; the live layer has {ours:,} ({diff:+.1%}).")
    conv1 = model.conv1.conv
    if not model.spec.small_stem:
        kh, kw = conv1.kernel_size
        notes.append(
            f"conv1 is {kh}x{kw}x{conv1.in_channels}x{conv1.out_channels} = "
            f"{kh * kw * conv1.in_channels * conv1.out_channels:,} weights: the paper's 2.7K (and its 34M ops, "
            "which are 2.7K x 112 x 112) cannot describe it."
        )
    if compared_macs:
        total = sum(r.macs for r in rows if not r.train_only)
        notes.append(f"Total: {total / 1e9:.3f} billion multiply-adds; the paper says {PAPER_TOTAL_OPS_TEXT}.")
    if model.spec.five_by_five_kernel != 5:
        notes.append(
            "This variant uses 3x3 convs in the '5x5' branches (torchvision's known deviation, vision#906): "
            "every Inception row differs from the paper for that reason."
        )
    return notes


def summary_for(
    name: str, input_size: int | None = None, *, in_channels: int | None = None, aux: bool = True
) -> Summary:
    """Table 1 for a registered variant, profiled on the meta device (no weights, no arithmetic)."""
    with torch.device("meta"):
        model = create_model(name, in_channels=in_channels, aux=aux)
    return summarize(model, input_size)


# ---------------------------------------------------------------------------------------------- formats

COLUMNS = (
    "type",
    "patch size/stride",
    "output size",
    "depth",
    "#1x1",
    "#3x3 reduce",
    "#3x3",
    "#5x5 reduce",
    "#5x5",
    "pool proj",
    "params",
    "paper params",
    "diff",
    "ops",
    "paper ops",
    "diff",
)


def _shape_text(shape: list[int]) -> str:
    if len(shape) == 3:
        c, h, w = shape
        return f"{h}x{w}x{c}"
    return "x".join(str(s) for s in shape)


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:+.1%}"


def _cells(row: SummaryRow) -> list[str]:
    label = row.type + (" [train only]" if row.train_only else "")
    return [
        label,
        row.patch,
        _shape_text(row.output_shape),
        str(row.depth) if row.depth else "0",
        _opt(row.n1x1),
        _opt(row.n3x3_reduce),
        _opt(row.n3x3),
        _opt(row.n5x5_reduce),
        _opt(row.n5x5),
        _opt(row.pool_proj),
        f"{row.params:,}",
        row.paper_params_text or "",
        _pct(row.params_diff),
        f"{row.macs:,}",
        row.paper_macs_text or "",
        _pct(row.macs_diff),
    ]


def _total_cells(summary: Summary) -> list[str]:
    cells = ["total (inference)"] + [""] * (len(COLUMNS) - 1)
    cells[10] = f"{summary.total_params:,}"
    cells[13] = f"{summary.total_macs:,}"
    return cells


def _title(summary: Summary) -> str:
    return (
        f"GoogLeNet '{summary.variant}' at {summary.input_size}x{summary.input_size}x{summary.in_channels}: "
        f"{summary.total_params:,} parameters without the auxiliary heads, "
        f"{summary.total_params_with_aux:,} with them"
    )


def format_table(summary: Summary) -> str:
    body = [_cells(r) for r in summary.rows] + [_total_cells(summary)]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(COLUMNS)]
    numeric = set(range(3, len(COLUMNS)))

    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [_title(summary), "", line(COLUMNS), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    out += ["", *(f"- {n}" for n in summary.notes)]
    return "\n".join(out)


def format_markdown(summary: Summary) -> str:
    out = [f"**{_title(summary)}**", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in summary.rows]
    out += ["| " + " | ".join(_total_cells(summary)) + " |", ""]
    out += [f"- {n}" for n in summary.notes]
    return "\n".join(out)


def format_csv(summary: Summary) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", *COLUMNS])
    writer.writerows([[r.name, *_cells(r)] for r in summary.rows])
    return buffer.getvalue()


def format_json(summary: Summary) -> str:
    rows = []
    for r in summary.rows:
        row = asdict(r)
        row["params_diff"] = r.params_diff
        row["macs_diff"] = r.macs_diff
        rows.append(row)
    payload = {
        "variant": summary.variant,
        "input_size": summary.input_size,
        "in_channels": summary.in_channels,
        "total_params": summary.total_params,
        "total_params_with_aux": summary.total_params_with_aux,
        "total_macs": summary.total_macs,
        "rows": rows,
        "notes": summary.notes,
    }
    return json.dumps(payload, indent=2)


FORMATS = {"table": format_table, "markdown": format_markdown, "csv": format_csv, "json": format_json}
