"""`googlenet visualize`: the image a channel or layer responds to most, or DeepDream on a photo."""

from __future__ import annotations

import argparse

from googlenet.cli.common import Commands, positive_int


def register(commands: Commands) -> None:
    parser = commands.add("visualize", run, "feature visualisation of a channel or layer, or DeepDream on an image")
    parser.add_argument(
        "checkpoint", help="a checkpoint written by 'googlenet train' or 'googlenet import-torchvision'"
    )
    parser.add_argument(
        "--layer", required=True, help="inception4c, Caffe's inception_4c/output or Lucid's mixed4c (or a conv)"
    )
    parser.add_argument(
        "--channel", type=int, help="one channel of the layer (default: the whole layer); with --layer fc, a class"
    )
    parser.add_argument("--dream", metavar="IMAGE", help="DeepDream: amplify what the layer sees in this image")
    parser.add_argument("--steps", type=positive_int, help="optimisation steps (default: 256; DeepDream 40 per octave)")
    parser.add_argument("--size", type=positive_int, help="image side in px (default: the checkpoint's input size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the PNG to write")


def run(args: argparse.Namespace) -> int:
    from googlenet.data import open_image
    from googlenet.explain.visualize import deep_dream, save_png, visualize_feature
    from googlenet.run.checkpoint import load_checkpoint, model_from_checkpoint

    model, prep, class_names = model_from_checkpoint(load_checkpoint(args.checkpoint))
    size = args.size or prep.image_size
    if args.dream:
        from torchvision.transforms.functional import pil_to_tensor, resize

        photo = open_image(args.dream, prep.in_channels)
        image = resize(pil_to_tensor(photo), size).float() / 255
        result = deep_dream(
            model,
            image,
            args.layer,
            channel=args.channel,
            mean=prep.mean,
            std=prep.std,
            steps=args.steps or 40,
            seed=args.seed,
        )
    else:
        result = visualize_feature(
            model,
            args.layer,
            channel=args.channel,
            image_size=size,
            mean=prep.mean,
            std=prep.std,
            steps=args.steps or 256,
            seed=args.seed,
        )
    save_png(result.image, args.out)
    what = result.layer if result.channel is None else f"{result.layer} channel {result.channel}"
    objective = "mean square" if result.channel is None else "mean before ReLU"
    if result.layer == "fc" and result.channel is not None:  # the classifier: a channel is a class
        what, objective = f"class {result.channel} ({class_names[result.channel]})", "logit"
    print(f"{what}: {objective} {result.start:.4g} -> {result.end:.4g}; wrote {args.out}")
    return 0
