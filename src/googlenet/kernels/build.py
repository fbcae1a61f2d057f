"""Build and load the C++ training kernels (``csrc/kernels.cpp``) with ``torch.utils.cpp_extension``.

``make setup`` builds them once per environment (``python -m googlenet.kernels build``) into
``<sys.prefix>/googlenet-kernels/<tag>``, where the tag hashes the source, the compiler flags and torch's version:
an edited source or another torch finds no library under its tag and is built afresh, never loaded stale.
Training only loads what the set-up built; it never compiles (a minute of both cores at the start of a run would
spoil its time budget). Where nothing could be built (no C++ compiler) the kernels' callers use ATen instead and
say so once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch

NAME = "googlenet_kernels"
SOURCE = Path(__file__).with_name("csrc") / "kernels.cpp"
# -march=native: the library is built on the machine that trains (by its set-up); the ATen path needs no build.
CFLAGS = ("-O3", "-march=native", "-fopenmp")


def build_root() -> Path:
    """Where this environment keeps its builds."""
    return Path(sys.prefix) / "googlenet-kernels"


def cpu_fingerprint() -> str:
    """What -march=native compiled for: the architecture and the CPU's instruction-set flags. An environment
    copied to another CPU then finds no build under its tag (and uses ATen) instead of loading code its CPU
    may not run: an illegal instruction kills the process, past any fallback."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()} {flags}"


def build_tag() -> str:
    """A name for one build: the source, the flags, torch's version and the CPU it was compiled for."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    digest.update(torch.__version__.encode())
    digest.update(cpu_fingerprint().encode())
    return digest.hexdigest()[:16]


def library_path() -> Path:
    return build_root() / build_tag() / f"{NAME}.so"


def load_built() -> ModuleType:
    """The built kernels, imported from this environment's build. Raises FileNotFoundError where the set-up
    has not built them (or built them for another source or torch)."""
    path = library_path()
    if not path.is_file():
        raise FileNotFoundError(path)
    spec = importlib.util.spec_from_file_location(NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compiler() -> str | None:
    """The C++ compiler cpp_extension would use, if there is one."""
    return shutil.which(os.environ.get("CXX", "c++"))


def build(*, verbose: bool = False) -> Path:
    """Compile the kernels for this environment (about a minute) and return the library's path. Builds in a
    temporary folder renamed into place, so an interrupted build leaves nothing half-written."""
    target = library_path()
    if target.is_file():
        return target
    if compiler() is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    build_root().mkdir(parents=True, exist_ok=True)
    # On import, cpp_extension warns that it found no CUDA runtime: true, and irrelevant to a CPU-only extension.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension  # imports setuptools: only where something is built

    with tempfile.TemporaryDirectory(dir=build_root(), prefix=".build-") as scratch:
        cpp_extension.load(
            name=NAME,
            sources=[str(SOURCE)],
            build_directory=scratch,
            extra_cflags=list(CFLAGS),
            verbose=verbose,
        )
        staged = Path(scratch) / "staged"
        staged.mkdir()
        shutil.copy2(Path(scratch) / f"{NAME}.so", staged / f"{NAME}.so")
        try:
            staged.rename(target.parent)
        except OSError:  # another process built it meanwhile
            if not target.is_file():
                raise
    for old in build_root().iterdir():  # builds of an earlier source or torch: no longer loadable
        if old.is_dir() and old != target.parent and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return target
