"""Table 1 and the cost arithmetic, recomputed from live models, checked against hand calculations."""

import json

import pytest
import torch

from googlenet import count_parameters, create_model
from googlenet.costs import cost_report, format_json, format_text
from googlenet.summary import (
    FORMATS,
    disagrees,
    paper_ops,
    paper_params,
    summarize,
    summary_for,
)


def rows_by_name(name: str = "paper", size: int = 224) -> dict:
    return {r.name: r for r in summary_for(name, size).rows}


def test_conv1_row_by_hand() -> None:
    row = rows_by_name()["conv1"]
    assert row.type == "convolution" and row.patch == "7x7/2" and row.depth == 1
    assert row.output_shape == [64, 112, 112]
    assert row.params == 7 * 7 * 3 * 64 + 64
    assert row.macs == 112 * 112 * 7 * 7 * 3 * 64
    assert row.paper_params_text == "2.7K" and row.paper_macs_text == "34M"


def test_stem_3x3_row_merges_the_reduction_like_the_paper() -> None:
    row = rows_by_name()["conv2+conv3"]
    assert (row.patch, row.depth, row.n3x3_reduce, row.n3x3) == ("3x3/1", 2, 64, 192)
    assert row.macs == 56 * 56 * (64 * 64 + 64 * 192 * 9) == 359_661_568
    assert row.output_shape == [192, 56, 56]


def test_inception_3a_row_by_hand() -> None:
    row = rows_by_name()["inception3a"]
    weights = 192 * 64 + 192 * 96 + 96 * 128 * 9 + 192 * 16 + 16 * 32 * 25 + 192 * 32
    assert weights == 163_328
    assert row.params == weights + (64 + 96 + 128 + 16 + 32 + 32)
    assert row.macs == 28 * 28 * weights == 128_049_152
    assert row.output_shape == [256, 28, 28] and row.depth == 2
    assert (row.n1x1, row.n3x3_reduce, row.n3x3, row.n5x5_reduce, row.n5x5, row.pool_proj) == (64, 96, 128, 16, 32, 32)


def test_inception_5b_row_by_hand() -> None:
    row = rows_by_name()["inception5b"]
    weights = 832 * 384 + 832 * 192 + 192 * 384 * 9 + 832 * 48 + 48 * 128 * 25 + 832 * 128
    assert row.params == weights + (384 + 192 + 384 + 48 + 128 + 128) == 1_444_080
    assert row.macs == 7 * 7 * weights
    assert row.output_shape == [1024, 7, 7]
    assert row.paper_params == 1388 * 1024


def test_pools_and_head_rows() -> None:
    rows = rows_by_name()
    assert rows["maxpool1"].patch == "3x3/2" and rows["maxpool1"].output_shape == [64, 56, 56]
    assert rows["maxpool4"].output_shape == [832, 7, 7]
    assert rows["avgpool"].patch == "7x7/1" and rows["avgpool"].output_shape == [1024, 1, 1]
    assert rows["dropout"].type == "dropout (40%)"
    assert rows["fc"].macs == 1024 * 1000 and rows["fc"].params == 1_025_000
    assert rows["aux1"].train_only and rows["aux2"].train_only


@pytest.mark.parametrize("name", ["paper", "torchvision", "bn"])
def test_totals_match_the_model(name: str) -> None:
    summary = summary_for(name)
    assert summary.total_params == count_parameters(create_model(name, aux=False))
    assert summary.total_params_with_aux == count_parameters(create_model(name))


def test_total_ops_near_the_papers_one_and_a_half_billion() -> None:
    assert 1.45e9 < summary_for("paper").total_macs < 1.6e9
    assert summary_for("torchvision").total_macs == 1_498_376_192


def test_meta_profile_equals_a_real_model() -> None:
    real = summarize(create_model("paper"), 224)
    meta = summary_for("paper", 224)
    assert [(r.name, r.params, r.macs, r.output_shape) for r in real.rows] == [
        (r.name, r.params, r.macs, r.output_shape) for r in meta.rows
    ]


def test_paper_units_and_flagged_mistakes() -> None:
    assert paper_params("112K") == 114_688 and paper_ops("128M") == 128_000_000
    assert not disagrees(1_024_000, "1M", paper_ops("1M"))  # within the printed rounding
    notes = "\n".join(summary_for("paper").notes)
    assert "conv1: the paper prints 2.7K params" in notes
    assert "7x7x3x64 = 9,408 weights" in notes
    assert "inception4c: the paper prints 463K params" in notes
    assert "inception3a" not in notes  # agrees with the paper


def test_small_variant_summary() -> None:
    summary = summary_for("small", 28, in_channels=1)
    rows = {r.name: r for r in summary.rows}
    assert rows["conv1"].patch == "3x3/1" and rows["conv1"].output_shape == [64, 28, 28]
    assert rows["inception3a"].output_shape == [256, 14, 14]
    assert rows["conv1"].paper_params is None
    assert "maxpool2" not in rows  # the small stem has no second pool


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_formats(fmt: str) -> None:
    text = FORMATS[fmt](summary_for("paper"))
    assert "inception" in text
    if fmt == "json":
        payload = json.loads(text)
        row = payload["rows"][0]
        assert {"name", "output_shape", "params", "macs", "paper_params", "paper_macs"} <= set(row)
        assert payload["total_params"] == 6_998_552


def test_worked_examples_and_vgg_ratio() -> None:
    report = cost_report()
    five, weights = report.examples
    assert (five.naive, five.reduced) == (120_422_400, 12_443_648)
    assert (weights.naive, weights.reduced) == (819_200, 50_688)
    assert report.vgg16_params == 138_357_544
    assert 19 < report.vgg16_ratio < 21
    values = {p.value for p in report.published}
    assert {6_998_552, 13_378_280, 6_994_392, 6_624_904} <= values


def test_module_costs() -> None:
    report = cost_report()
    by_name = {m.name: m for m in report.modules}
    assert len(by_name) == 9
    a3 = by_name["inception3a"]
    assert a3.input_shape == [192, 28, 28]
    assert a3.reduced_macs == 128_049_152
    # Naive 3a: 1x1, 3x3 and 5x5 convs straight on 192 channels.
    assert a3.naive_macs == 28 * 28 * 192 * (64 + 9 * 128 + 25 * 32)
    assert a3.naive_branch_macs[3] == 0 and a3.naive_out_channels == 416
    assert all(m.naive_macs > m.reduced_macs for m in report.modules)
    assert "inception3a" in format_json(report) and "12,443,648" in format_text(report)


def test_profiling_costs_no_real_memory() -> None:
    with torch.device("meta"):
        model = create_model("paper")
    assert next(model.parameters()).is_meta
    assert summarize(model).total_params == 6_998_552
