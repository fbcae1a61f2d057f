"""Optional dependencies. The core install (torch, torchvision, numpy, pillow, tqdm) trains, evaluates and
predicts; the extras bring the rest:

- ``[deploy]``: onnx, onnxscript, onnxruntime, openvino, nncf, safetensors (export, the other engines, int8)
- ``[viz]``: matplotlib, tensorboard (pictures, reports, TensorBoard logs)
- ``[explain]``: captum, matplotlib (Grad-CAM maps and the pictures of ``googlenet explain``)
- ``[serve]``: fastapi, uvicorn, python-multipart (``googlenet serve``: the web page and JSON API)
- ``[ray]``: Ray Serve, with [serve] (``googlenet serve --ray``: the same server in several replicas)

Code that needs one of them imports it through :func:`require`, at the point of use and never at module import
time, so that a missing package becomes one line saying which extra to install instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from googlenet.errors import GoogLeNetError

EXTRAS = ("deploy", "viz", "explain", "serve", "ray")


class MissingExtraError(GoogLeNetError, ImportError):
    """A feature whose optional dependency is not installed. The CLI prints it as one line and exits 2."""


def install_hint(extra: str) -> str:
    return f"pip install 'googlenet[{extra}]'"


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature`` (e.g. "export --format onnx"), or raise MissingExtraError naming the
    ``extra`` that installs it."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; one of {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing, package = error.name or module, module.split(".")[0]
        if missing.split(".")[0] == package:  # name the package to install, not the submodule asked for
            missing = package
        raise MissingExtraError(
            f"{feature} needs the [{extra}] extra ({missing} is not installed): {install_hint(extra)}"
        ) from error  # --debug shows the original ImportError
