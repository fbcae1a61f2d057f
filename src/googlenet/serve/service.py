"""What the server knows about its model: the checkpoint's network, preprocessing and classes, the engine that
answers predictions (chosen as `evaluate --backend auto` chooses), the model card, and the page's
explanation of one image (exact CAM overlay and branch shares, from the plain fp32 model)."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from googlenet.data import DataError
from googlenet.engines import select_engine
from googlenet.explain.branches import branch_shares
from googlenet.explain.cam import FINER_LAYER, cells, class_activation_maps, grad_cam, normalise, upsample
from googlenet.explain.layers import BRANCHES, MODULE_KEYS
from googlenet.explain.run import pixels as seen_pixels
from googlenet.extras import MissingExtraError
from googlenet.model import count_parameters, create_model
from googlenet.run.checkpoint import load_checkpoint, model_from_checkpoint, run_folder
from googlenet.run.records import read_history
from googlenet.summary import format_json, summarize


@dataclass
class ServeSettings:
    backend: str = "auto"  # an engine name, or "auto": measure the installed ones and take the fastest
    precision: str = "fp32"
    max_batch: int = 16  # 1: one request at a time (no dynamic batching)
    wait_ms: float = 5.0  # how long the first image of a batch waits for company
    max_bytes: int = 10 * 2**20  # per uploaded file
    max_pixels: int = 40_000_000  # declared width x height, checked before decoding
    max_files: int = 16  # per multipart request
    top_k: int = 5
    # Host header names served (without the port); empty: any. `googlenet serve` on a loopback address allows
    # only loopback names, so a web page elsewhere cannot reach it through DNS rebinding.
    allowed_hosts: tuple[str, ...] = ()
    decode_slots: int = 2  # images decoded at once: wide images take several bytes a pixel while converted
    body_timeout_s: float = 30.0  # the longest a client may pause while it sends a request body
    header_timeout_s: float = 10.0  # the longest a request's header may take to arrive
    model_name: str = "googlenet"  # the model's name in the Open Inference Protocol's /v2/models/NAME

    @property
    def body_limit(self) -> int:
        """The largest request body: every file may be max_bytes; a form's boundaries and headers, or an
        inference request's JSON header, get a little room on top."""
        return self.max_bytes * self.max_files + 2**20


def _jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> RGB in [0, 1] (H, W, 3): the blue-to-red map CAM figures use."""
    four = 4.0 * values[..., None]
    return np.clip(1.5 - np.abs(four - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)


class ModelService:
    def __init__(self, checkpoint: str | Path, settings: ServeSettings) -> None:
        checkpoint = Path(checkpoint)
        payload = load_checkpoint(checkpoint)
        self.model, self.prep, self.class_names = model_from_checkpoint(payload)
        size, channels = self.prep.image_size, self.prep.in_channels
        self.engine, self.engine_reason = select_engine(
            self.model,
            settings.backend,
            settings.precision,
            image_size=size,
            probe=lambda: torch.zeros(settings.max_batch, channels, size, size),
            workload=1_000_000,  # a server answers many images: measuring the engines repays itself
        )
        self.info = self._model_card(checkpoint, payload)

    def preprocess(self, image: Image.Image) -> Tensor:
        tensor: Tensor = self.prep.eval_transform()(image)
        return tensor

    def _model_card(self, checkpoint: Path, payload: dict[str, Any]) -> dict[str, Any]:
        model, prep = self.model, self.prep
        with torch.device("meta"):  # Table 1 of this very variant, at its input size, without arithmetic
            meta = create_model(model.variant, num_classes=model.num_classes, in_channels=model.in_channels, aux=False)
        run = run_folder(checkpoint)
        try:
            history = read_history(run)
        except DataError:  # no run folder beside the checkpoint, or a damaged one: a card without curves
            history = []
        test = None
        try:
            result = json.loads((run / "eval_test.json").read_text(encoding="utf-8"))
            test = {k: result.get(k) for k in ("top1", "top5", "num_samples", "tta", "engine")}
        except (OSError, json.JSONDecodeError):
            pass
        keys = ("epoch", "train_loss", "val_loss", "val_top1", "ema_val_top1", "lr", "elapsed_minutes")
        return {
            "checkpoint": checkpoint.name,
            "variant": model.variant,
            "description": model.spec.description,
            "classes": self.class_names,
            "parameters": count_parameters(model),
            "weights": str(payload.get("weights", "model")),
            "preprocessing": prep.to_dict(),
            "engine": self.engine.name,
            "engine_reason": self.engine_reason,
            "training": [{k: row[k] for k in keys if k in row} for row in history] or None,
            "test": test,
            "table1": json.loads(format_json(summarize(meta, prep.image_size))),
        }

    def explain(self, x: Tensor, top_k: int) -> dict[str, Any]:
        """Top-k from the plain model, the exact CAM of the top class drawn over the image, and the image's
        branch shares. Runs on the model thread."""
        batch = x.unsqueeze(0)
        with torch.no_grad():
            probabilities = self.model(batch).float().softmax(1)[0]
        values, indices = probabilities.topk(min(top_k, len(self.class_names)))
        top_class = indices[:1].view(1, 1)
        cam = class_activation_maps(self.model, batch, top_class)
        shares = branch_shares(self.model, batch, target=indices[:1])
        return {
            "top": [
                {"class": self.class_names[i], "probability": round(p, 6)}
                for i, p in zip(indices.tolist(), values.tolist(), strict=True)
            ],
            "cam": {
                "class": self.class_names[int(indices[0])],
                "layer": "inception5b",
                "cells": cells(cam),  # at 64 px four cells: the page says so
                "png": self._overlay(batch[0], cam),
            },
            "grad_cam": self._grad_cam(batch, top_class),
            "branch_shares": {
                "modules": [f"inception{k}" for k in MODULE_KEYS],
                "branches": list(BRANCHES),
                "energy": shares.energy[0].tolist(),
                "attribution": shares.attribution[0].tolist(),
                "channels": shares.channels.tolist(),
            },
        }

    def _grad_cam(self, batch: Tensor, top_class: Tensor) -> dict[str, str] | None:
        """Grad-CAM of the top class at FINER_LAYER, finer than inception5b's map; None without captum."""
        try:
            maps = grad_cam(self.model, batch, FINER_LAYER, top_class)
        except MissingExtraError:
            return None
        return {"layer": FINER_LAYER, "cells": cells(maps), "png": self._overlay(batch[0], maps)}

    def _overlay(self, x: Tensor, maps: Tensor) -> str:
        """The image as the model saw it with a (1, 1, h, w) map upsampled over it, as a PNG data URL, at least
        224 px wide."""
        heat = normalise(upsample(maps, (x.shape[1], x.shape[2])))[0, 0].numpy()
        pixels = seen_pixels(x.unsqueeze(0), self.prep)[0].permute(1, 2, 0).numpy()
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        blended = 0.55 * pixels + 0.45 * _jet(heat)
        picture = Image.fromarray((blended * 255).round().astype(np.uint8), mode="RGB")
        factor = -(-224 // picture.width)
        if factor > 1:
            picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
