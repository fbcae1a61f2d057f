"""``python -m googlenet.kernels build``: compile the C++ training kernels for this environment (``make setup``
runs it). Without a compiler it says so and exits 0: training then runs on ATen."""

from __future__ import annotations

import argparse
import sys

from googlenet.kernels import build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m googlenet.kernels", description=__doc__)
    parser.add_argument("action", choices=["build", "where"], help="build the kernels, or print where they live")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")
    parser.add_argument("--quiet", action="store_true", help="say nothing when the kernels are already built")
    args = parser.parse_args(argv)
    if args.action == "where":
        print(build.library_path())
        return 0
    if build.library_path().is_file():
        if not args.quiet:
            print(f"googlenet: C++ training kernels up to date: {build.library_path()}")
        return 0
    if build.compiler() is None:
        print("googlenet: no C++ compiler found, so the C++ training kernels are not built; training uses ATen's")
        return 0
    print("googlenet: building the C++ training kernels (about a minute)", flush=True)
    try:
        path = build.build(verbose=args.verbose)
    except Exception as error:  # a failed build must not fail the set-up: ATen still trains
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        print(
            f"googlenet: the C++ training kernels did not build ({reason}); training uses ATen's "
            "(`python -m googlenet.kernels build --verbose` shows the compiler's output)",
            file=sys.stderr,
        )
        return 0
    print(f"googlenet: C++ training kernels built: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
