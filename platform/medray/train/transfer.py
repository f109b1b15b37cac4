"""Transfer learning: a frozen backbone embeds patches in a Ray Data actor pool; a logistic head is fit.

The head is a multinomial logistic regression (one linear layer, L-BFGS, L2) on standardised
features; the standardisation is folded into the network's own final linear layer, so the
published model is the ordinary network (backbone + head as one ``nn.Module``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medray.allocator import with_malloc_env


class EmbedPatches:
    """Actor: build the backbone once, turn decoded uint8 patches into feature vectors."""

    def __init__(self, config, num_classes: int) -> None:
        from medray.models.registry import build_model, feature_extractor
        from medray.train.loop import as_config, make_preprocessing

        cfg = as_config(config)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        spec = cfg.model.model_copy(update={"num_classes": num_classes})
        torch.manual_seed(cfg.seed)  # the driver builds the published net with the same seed: same backbone
        self.backbone, _ = feature_extractor(build_model(spec, cfg.storage), spec)
        self.backbone.eval()
        self.prep = make_preprocessing(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from medray.models.preprocess import to_tensor

        with torch.no_grad():
            features = self.backbone(to_tensor(batch["image"], self.prep)).float().numpy()
        return {"features": features, "label": batch["label"]}


def embed(ds, cfg, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of a decoded stream (model loaded once per actor)."""
    import ray.data

    out = ds.map_batches(EmbedPatches, batch_format="numpy", batch_size=cfg.batch_size,
                         compute=ray.data.ActorPoolStrategy(size=cfg.scaling.num_workers),
                         fn_constructor_kwargs={"config": cfg, "num_classes": num_classes},
                         **with_malloc_env({"num_cpus": cfg.scaling.cpus_per_worker}))
    feats, labels = [], []
    for batch in out.iter_batches(batch_format="numpy", batch_size=None):
        feats.append(batch["features"])
        labels.append(batch["label"])
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int64)


def fit_logistic_head(x: np.ndarray, y: np.ndarray, num_classes: int, weight_decay: float = 1e-3,
                      class_weights: list[float] | None = None, steps: int = 200, seed: int = 0) -> nn.Linear:
    """Multinomial logistic regression on ``x`` (standardised inside, folded back into the layer)."""
    torch.manual_seed(seed)
    xt = torch.from_numpy(x).double()
    mu, sd = xt.mean(0), xt.std(0).clamp_min(1e-6)
    z = (xt - mu) / sd
    yt = torch.from_numpy(y)
    linear = nn.Linear(x.shape[1], num_classes).double()
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    weight = torch.tensor(class_weights, dtype=torch.float64) if class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(linear(z), yt) + weight_decay * linear.weight.pow(2).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    folded = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        folded.weight.copy_((linear.weight / sd).float())
        folded.bias.copy_((linear.bias - (linear.weight * (mu / sd)).sum(1)).float())
    return folded


def train_transfer(cfg) -> dict[str, Any]:
    """``mode: transfer``: embed train/val, fit the head, publish like fine-tuning."""
    from medray.config.base import write_resolved_config
    from medray.models.registry import build_model, classifier_head_name
    from medray.train import sampling
    from medray.train.data import decoded, load_train_data
    from medray.train.loop import make_preprocessing
    from medray.train.metrics import best_f1_threshold
    from medray.train.trainer import _mlflow_on, _start_mlflow, finish

    data = load_train_data(cfg)
    classes = data.classes
    config_uri = write_resolved_config(cfg, cfg.output, cfg.storage)
    run_id = _start_mlflow(cfg, data, resume=False)[0] if _mlflow_on(cfg) else None
    x_train, y_train = embed(decoded(data.train, cfg, classes), cfg, len(classes))
    x_val, y_val = embed(decoded(data.val, cfg, classes), cfg, len(classes))
    weights = None
    if cfg.imbalance != "none":
        weights = sampling.class_weights(np.bincount(y_train, minlength=len(classes))).tolist()
    head = fit_logistic_head(x_train, y_train, len(classes), cfg.optimizer.weight_decay, weights, seed=cfg.seed)
    spec = cfg.model.model_copy(update={"num_classes": len(classes)})
    torch.manual_seed(cfg.seed)
    model = build_model(spec, cfg.storage)
    target = model.get_submodule(classifier_head_name(spec))
    with torch.no_grad():
        target.weight.copy_(head.weight)
        target.bias.copy_(head.bias)
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(head(torch.from_numpy(x_val)), dim=1).numpy()
    threshold = 0.5
    if len(classes) == 2 and len(np.unique(y_val)) > 1:
        threshold = float(best_f1_threshold(y_val == 1, probs[:, 1])[0])
    spec = spec.model_copy(update={"pretrained": None})
    history = [{"epoch": 1, "train_examples": int(len(y_train)), "val_examples": int(len(y_val))}]
    return finish(cfg, model, spec, make_preprocessing(cfg), classes, probs, y_val, threshold, run_id,
                  history=history, fp_rounds=[], config_uri=config_uri,
                  extra={"mode": "transfer", "feature_dim": int(x_train.shape[1])})
