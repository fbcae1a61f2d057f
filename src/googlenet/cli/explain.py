"""`googlenet explain`: class activation maps, Grad-CAM, branch shares and early exits for a checkpoint."""

from __future__ import annotations

import argparse

from googlenet.cli.common import Commands, UsageError, positive_int, progress_bar, progress_wanted


def register(commands: Commands) -> None:
    parser = commands.add(
        "explain", run, "class activation maps, Grad-CAM, branch shares and early exits for images or a split"
    )
    parser.add_argument(
        "checkpoint", help="a checkpoint written by 'googlenet train' or 'googlenet import-torchvision'"
    )
    parser.add_argument("paths", nargs="*", help="image files or folders (searched recursively)")
    parser.add_argument("--split", choices=("test", "val", "train"), help="explain a split of the run's data instead")
    parser.add_argument("--out", required=True, help="folder for the pictures, maps and JSON")
    parser.add_argument("--top-k", type=positive_int, default=3, help="classes to map per image (default: 3)")
    parser.add_argument(
        "--layer",
        default="inception4c",
        help="layer for Grad-CAM: inception4c, Caffe's inception_4c/output or Lucid's mixed4c (default: inception4c)",
    )
    parser.add_argument("--method", choices=("gradcam", "gradxact"), default="gradcam", help="Grad-CAM family method")
    parser.add_argument(
        "--per-class", type=positive_int, default=2, help="with --split: right and wrong CAMs per class (default: 2)"
    )
    parser.add_argument(
        "--share-images",
        type=positive_int,
        default=50,
        help="with --split: images per class for the branch shares (default: 50)",
    )
    parser.add_argument("--data-root", help="with --split: where the data is (default: the checkpoint's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if bool(args.paths) == bool(args.split):
        raise UsageError("give image files or folders, or --split, but not both")
    from googlenet.explain.run import explain_images, explain_split

    progress = progress_bar(progress_wanted(args))
    if args.split:
        result = explain_split(
            args.checkpoint,
            args.split,
            args.out,
            data_root=args.data_root,
            per_class=args.per_class,
            share_images=args.share_images,
            progress=progress,
        )
        from googlenet.explain.early_exits import format_heads

        print(f"early exits on {args.split}:")
        print(format_heads(result.heads))
        print(f"wrote {result.cam_grid}, {result.shares_figure} and {result.json_path}")
        return 0
    explanations = explain_images(
        args.checkpoint, args.paths, args.out, top=args.top_k, layer=args.layer, method=args.method, progress=progress
    )
    width = max(len(str(e.path)) for e in explanations)
    for e in explanations:
        guesses = "  ".join(f"{c} {p:.1%}" for c, p in e.top)
        print(f"{e.path!s:<{width}}  {guesses}  -> {e.overlay.name}")
    print(
        f"wrote {len(explanations)} overlay(s), their maps (.npz), branch_shares.png "
        f"and explanations.json in {args.out}"
    )
    return 0
