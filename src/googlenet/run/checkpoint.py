"""Checkpoints: written atomically, read with torch.load(weights_only=True) so no file can run code.

A checkpoint alone rebuilds the model, its preprocessing and class names (for evaluate / predict /
export), and everything needed to resume training exactly (optimizer, EMA, RNG state, position).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from googlenet.config import Config, config_from_dict
from googlenet.data import Batches, Preprocessing, eval_split
from googlenet.errors import GoogLeNetError
from googlenet.files import atomic_write
from googlenet.model import GoogLeNet, create_model, list_models

FORMAT = "googlenet-checkpoint"
FORMAT_VERSION = 2
# From format 2 on, a run's train/validation split and batches are drawn through NumPy's SeedSequence (the same on
# every Python and machine); format 1 runs drew them from Python's hash() and cannot be continued or re-split.
CURRENT_SEEDING_SINCE = 2


class CheckpointError(GoogLeNetError):
    """A checkpoint that is missing, unreadable, unsafe or of an unknown kind."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint. Only tensors and plain data are accepted (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with path.open("rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # neither torch.save's zip nor a pickle
        raise CheckpointError(f"{path} is not a readable checkpoint: it is neither a torch.save file nor a pickle")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reasons = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        detail = f" ({reasons[0]})" if reasons else ""
        raise CheckpointError(
            f"{path} was refused: it holds code or objects beyond weights and plain data{detail}; "
            "googlenet never unpickles code"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a googlenet checkpoint (use 'googlenet import-torchvision' for others)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this googlenet reads up to {FORMAT_VERSION}: upgrade googlenet"
        )
    for key in ("model", "state_dict", "preprocessing", "class_names"):
        if key not in payload:
            raise CheckpointError(f"{path} lacks {key!r}: it is incomplete")
    return payload


def check_current_seeding(payload: dict[str, Any], path: str | Path, needs: str) -> None:
    """Refuse, naming ``needs``, a checkpoint whose run drew its split and batches the format-1 way."""
    if int(payload.get("format_version", 1)) < CURRENT_SEEDING_SINCE:
        raise CheckpointError(
            f"{path} was written by an older googlenet that drew the train/validation split and the batch order "
            f"differently; {needs} needs a checkpoint written by this version (the test split is unaffected)"
        )


def preferred_state(payload: dict[str, Any], use_ema: bool | None = None) -> dict[str, Any]:
    """The weights to use: the EMA ones when asked (``use_ema`` None: when the run found them better on
    validation, its "weights" entry) and present, else the trained model's."""
    if use_ema is None:
        use_ema = payload.get("weights") == "ema"
    ema_state = payload.get("ema_state_dict")
    state: dict[str, Any] = ema_state if use_ema and ema_state else payload["state_dict"]
    return state


def model_from_checkpoint(
    payload: dict[str, Any], *, use_ema: bool | None = None, aux: bool = False
) -> tuple[GoogLeNet, Preprocessing, list[str]]:
    """Rebuild (model in eval mode, preprocessing, class names). ``use_ema`` None takes the weights the
    run found better on validation (its "weights" entry); auxiliary heads are dropped unless ``aux``."""
    spec = payload["model"]
    name = spec.get("name")
    if name not in list_models():
        raise CheckpointError(f"checkpoint names an unknown model {name!r}")
    state = preferred_state(payload, use_ema)
    has_aux = any(k.startswith("aux1.") for k in state)
    model = create_model(name, num_classes=int(spec["num_classes"]), in_channels=int(spec["in_channels"]), aux=has_aux)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        summary = str(error).splitlines()[0]
        raise CheckpointError(f"checkpoint weights do not fit the {name} model they claim: {summary}") from None
    if has_aux and not aux:
        model.drop_aux()
    classes = list(payload["class_names"])
    if len(classes) != model.num_classes:
        raise CheckpointError(f"checkpoint has {len(classes)} class names for {model.num_classes} outputs")
    return model.eval(), Preprocessing.from_dict(payload["preprocessing"]), classes


def run_folder(checkpoint: Path) -> Path:
    """RUN/checkpoints/best.pt -> RUN; any other checkpoint -> its own folder."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def checkpoint_split(
    payload: dict[str, Any], checkpoint: Path, prep: Preprocessing, split: str, data_root: str | None = None
) -> tuple[Config, Batches]:
    """The run's config (with ``data_root`` if given) and ``split`` of its data, preprocessed with ``prep``. A
    split drawn from the run's seed needs a checkpoint written with today's seeding."""
    config = config_from_dict(payload["config"])
    if data_root:
        config.data.root = data_root
    if split != "test" and not (config.data.dataset == "folder" and (Path(config.data.root) / split).is_dir()):
        check_current_seeding(payload, checkpoint, f"--split {split}")
    return config, eval_split(config.data, prep, split, config.train.seed)
