"""`googlenet models`: the registered variants with their parameter counts."""

from __future__ import annotations

import argparse

from googlenet.cli.common import Commands


def register(commands: Commands) -> None:
    commands.add("models", run, "list the model variants with their parameter counts")


def run(args: argparse.Namespace) -> int:
    import torch

    from googlenet.model import VARIANTS, count_parameters, create_model, list_models

    width = max(len(n) for n in VARIANTS)
    print(f"{'name':<{width}}  {'params':>10}  {'with aux':>10}  {'input':>5}  description")
    for name in list_models():
        spec = VARIANTS[name]
        with torch.device("meta"):  # counting parameters needs no memory or arithmetic
            plain = create_model(name, aux=False)
            full = create_model(name)
        print(
            f"{name:<{width}}  {count_parameters(plain):>10,}  {count_parameters(full):>10,}  "
            f"{spec.default_input_size:>5}  {spec.description}"
        )
    return 0
