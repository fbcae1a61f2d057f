"""googlenet: the reference GoogLeNet (Inception v1) for PyTorch."""

from googlenet.errors import GoogLeNetError, InputSizeError, UnknownModelError
from googlenet.model import (
    AuxHead,
    GoogLeNet,
    Inception,
    InceptionSpec,
    NaiveInception,
    count_parameters,
    create_model,
    list_models,
)

__version__ = "0.1.0"

__all__ = [
    "AuxHead",
    "GoogLeNet",
    "GoogLeNetError",
    "Inception",
    "InceptionSpec",
    "InputSizeError",
    "NaiveInception",
    "UnknownModelError",
    "__version__",
    "count_parameters",
    "create_model",
    "list_models",
]
