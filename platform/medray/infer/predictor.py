"""The model inside a Ray Data actor: a callable class that loads the model once per actor.

``map_batches(Predictor, compute=ActorPoolStrategy(...), fn_constructor_kwargs=...)``: each batch
of decoded patches (``image`` N×H×W×C uint8 plus pass-through id columns) comes back as the same
id columns with ``prob``, the positive-class probability.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PASS_THROUGH = ("slide", "row", "col", "error")


def positive_index(classes: list[str], positive_class: str | None) -> int:
    """Index of the class whose probability is mapped: as named, else 'tumor', else the last class."""
    from medray.errors import ModelError

    if positive_class is not None:
        if positive_class not in classes:
            raise ModelError(f"positive_class {positive_class!r} is not a class of the model; its classes: {classes}")
        return classes.index(positive_class)
    return classes.index("tumor") if "tumor" in classes else len(classes) - 1


def resolve_device(device: str, num_gpus: float) -> str:
    if device == "auto":
        import torch

        return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"
    return device


class Predictor:
    """Loads ``model_uri`` once (on ``device``) and maps patch batches to probabilities."""

    def __init__(self, model_uri: str, storage: Any = None, device: str = "cpu", positive_class: str | None = None,
                 tracking_uri: str | None = None, batch_size: int = 64, precision: str = "auto") -> None:
        from medray.models.bundle import load_model

        if tracking_uri:
            import mlflow

            mlflow.set_tracking_uri(tracking_uri)
        self.model = load_model(model_uri, storage, device=device, precision=precision)
        self.index = positive_index(self.model.classes, positive_class)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        probs = self.model.predict_proba(batch["image"], batch_size=self.batch_size)[:, self.index]
        out = {key: batch[key] for key in PASS_THROUGH if key in batch}
        out["prob"] = probs.astype(np.float32)
        return out

