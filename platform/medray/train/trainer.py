"""Driver side of training: wire Ray Data streams into a ``TorchTrainer``, run FP rounds, publish.

Checkpoints live under ``<output>/checkpoints/run`` (local or ``s3://``); a second ``fit`` with the
same output resumes from the last one (Ray Train V2 restores its checkpoint manager from there).
The final model becomes a bundle under ``<output>/model`` and, with MLflow, a registered model.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np

from medray.errors import ConfigError
from medray.runtime import ensure_ray
from medray.storage import atomic_write_text, exists, get_filesystem, join_uri, read_text
from medray.train.config import TrainConfig

RUN_NAME = "run"


def checkpoint_root(cfg: TrainConfig) -> str:
    return join_uri(cfg.output, "checkpoints")


def check_resume(cfg: TrainConfig, resume: bool) -> None:
    """A fresh run must not silently continue an old one, and ``--resume`` needs something to resume."""
    has_run = exists(join_uri(checkpoint_root(cfg), RUN_NAME), cfg.storage)
    if has_run and not resume:
        raise ConfigError(f"output {cfg.output!r} already holds a training run; pass --resume to continue it "
                          "or set output= to a new location")
    if resume and not has_run:
        raise ConfigError(f"--resume: output {cfg.output!r} holds no checkpoints to resume from")


def check_model(cfg: TrainConfig, classes: list[str]) -> None:
    """Build the network once on the driver, so a bad name or mismatched weights fail here, clearly."""
    from medray.models.registry import build_model

    build_model(cfg.model.model_copy(update={"num_classes": len(classes)}), cfg.storage)


def fit(cfg: TrainConfig, train_ds, val_ds, loop_config: dict[str, Any]):
    """One ``TorchTrainer.fit`` over the given decoded streams; returns the Ray Train ``Result``."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    fs, path = get_filesystem(checkpoint_root(cfg), cfg.storage)
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker=_loop_entry,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=DataConfig(datasets_to_split=["train"],
                                  execution_options=ExecutionOptions(preserve_order=True)),
        run_config=RunConfig(name=RUN_NAME, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    return trainer.fit()


def _loop_entry(loop_config):
    from medray.train.loop import train_loop_per_worker

    train_loop_per_worker(loop_config)


def _start_mlflow(cfg: TrainConfig, data, resume: bool,
                  stream_counts: dict[str, int] | None = None) -> tuple[str | None, str | None]:
    """Open (or, on resume, reopen) the MLflow run; log params + lineage once. Returns (run_id, uri).

    ``stream_counts``: examples per class in one training epoch after balancing (before FP rows),
    logged as ``data.train_stream.n_<class>`` beside the split's own ``data.train.n_<class>``
    (default: the split's counts).
    """
    import mlflow

    from medray.train import tracking

    tracking.configure(cfg.mlflow)
    uri = mlflow.get_tracking_uri()
    marker = join_uri(cfg.output, "mlflow_run.json")
    stream_counts = dict(data.counts["train"]) if stream_counts is None else stream_counts
    if resume and exists(marker, cfg.storage):
        run_id = json.loads(read_text(marker, cfg.storage))["run_id"]
        return run_id, uri
    with mlflow.start_run() as run:
        tracking.log_params_flat(cfg)
        tracking.log_lineage(data.info, {"train": data.train_groups, "val": data.val_groups},
                             {**data.counts, "train_stream": stream_counts})
        tracking.log_params_flat({f"data.train_stream.n_{c}": str(n) for c, n in stream_counts.items()})
        mlflow.set_tag("medray.code_version", tracking.code_version())
    atomic_write_text(marker, json.dumps({"run_id": run.info.run_id, "tracking_uri": uri}), cfg.storage)
    return run.info.run_id, uri


def read_checkpoint(checkpoint) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """State dict + validation probabilities/labels saved by rank 0 in a checkpoint."""
    import torch

    from medray.train.loop import CHECKPOINT_FILE, VAL_FILE

    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=False)
        scores = np.load(os.path.join(d, VAL_FILE))
        return state, scores["probs"], scores["labels"]


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train as configured and publish the model; returns a JSON-able summary."""
    ensure_ray(cfg.ray)
    if cfg.mode == "transfer":
        from medray.train.transfer import train_transfer

        return train_transfer(cfg)
    import ray.data

    from medray.config.base import write_resolved_config
    from medray.train import sampling
    from medray.train.data import decoded, example_bytes, load_train_data, materialize_in_order

    check_resume(cfg, resume)
    data = load_train_data(cfg)
    classes = data.classes
    check_model(cfg, classes)
    config_uri = write_resolved_config(cfg, cfg.output, cfg.storage)
    counts = [data.counts["train"][c] for c in classes]
    base_train = data.train
    repeats = dict.fromkeys(classes, 1)
    if cfg.imbalance == "balanced_sampling":
        repeats = sampling.balance_plan(data.counts["train"])
        base_train = sampling.balanced_dataset(base_train, repeats)
    stream_counts = {c: data.counts["train"][c] * repeats[c] for c in classes}
    run_id, tracking_uri = (_start_mlflow(cfg, data, resume, stream_counts) if _mlflow_on(cfg)
                            else (None, None))
    weights = sampling.class_weights(counts).tolist() if cfg.imbalance == "class_weights" else None
    val_ds = decoded(data.val, cfg, classes)
    if cfg.cache_val:
        val_ds = materialize_in_order(val_ds)
    loop_config = {"config": cfg, "classes": classes, "class_weights": weights,
                   "mlflow_run_id": run_id, "mlflow_tracking_uri": tracking_uri}
    fp_rounds: list[dict[str, int]] = []
    extra_rows = None
    result = None
    for round_index in range(cfg.fp_oversampling.rounds + 1):
        total_epochs = cfg.epochs + round_index * cfg.fp_oversampling.epochs_per_round
        train_encoded = base_train if extra_rows is None else base_train.union(extra_rows)
        train_ds = decoded(train_encoded, cfg, classes)
        rows = sum(stream_counts.values()) + sum(r["added_rows"] for r in fp_rounds)
        if rows * example_bytes(cfg) <= cfg.cache_train_mb << 20:  # small: decode once, not every epoch
            train_ds = materialize_in_order(train_ds)
        result = fit(cfg, train_ds, val_ds, {**loop_config, "total_epochs": total_epochs, "round": round_index})
        if round_index < cfg.fp_oversampling.rounds:
            state, _, _ = read_checkpoint(result.checkpoint)
            rows, round_counts = sampling.score_and_select(cfg, classes, state["model"], data.train)
            round_counts["round"] = round_index + 1
            fp_rounds.append(round_counts)
            if run_id:
                _log_round(tracking_uri, run_id, round_counts)
            if rows is not None:
                extra_rows = rows if extra_rows is None else extra_rows.union(rows)
    return publish(cfg, result, classes, data, run_id, fp_rounds, config_uri,
                   extra={"train_stream_counts": stream_counts})


def _mlflow_on(cfg: TrainConfig) -> bool:
    # Not the MLFLOW_TRACKING_URI variable: mlflow.set_tracking_uri sets it for the whole process.
    return cfg.track


def _log_round(tracking_uri: str, run_id: str, counts: dict[str, int]) -> None:
    from mlflow.tracking import MlflowClient

    from medray.train.loop import log_metrics_batch

    log_metrics_batch(MlflowClient(tracking_uri=tracking_uri), run_id,
                      {f"fp_{key}": counts[key] for key in ("negatives", "false_positives", "added_rows")},
                      counts["round"])


def publish(cfg: TrainConfig, result, classes: list[str], data, run_id: str | None,
            fp_rounds: list[dict[str, int]], config_uri: str,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Final model → bundle under the output, plots, MLflow model (+ registry); summary dict."""
    import torch

    from medray.models.registry import build_model
    from medray.train.loop import make_preprocessing

    state, probs, labels = read_checkpoint(result.checkpoint)
    spec = cfg.model.model_copy(update={"num_classes": len(classes), "pretrained": None})
    model = build_model(spec)
    model.load_state_dict(state["model"])
    model.eval()
    prep = make_preprocessing(cfg)
    history = state.get("history", [])
    return finish(cfg, model, spec, prep, classes, probs, labels, float(state["threshold"]), run_id,
                  history=history, fp_rounds=fp_rounds, config_uri=config_uri,
                  extra={"checkpoint": result.checkpoint.path, **(extra or {})})


def finish(cfg: TrainConfig, model, spec, prep, classes, probs, labels, threshold: float, run_id: str | None,
           history: list[dict[str, Any]], fp_rounds: list[dict[str, int]], config_uri: str,
           extra: dict[str, Any]) -> dict[str, Any]:
    """Shared by fine-tuning and transfer: metrics, ROC/confusion PNGs, bundle, MLflow model."""
    from medray.models.bundle import save_bundle
    from medray.storage import atomic_local_path
    from medray.train.metrics import classification_metrics, predict_labels
    from medray.train.plots import plot_confusion, plot_roc

    metrics = classification_metrics(labels, probs, classes, threshold)
    plots = {}
    predicted = predict_labels(probs, threshold)
    for name, draw, values in (("roc.png", plot_roc, probs), ("confusion.png", plot_confusion, predicted)):
        uri = join_uri(cfg.output, "plots", name)
        with atomic_local_path(uri, cfg.storage, suffix=".png") as local:
            draw(labels, values, classes, local)
        plots[name] = uri
    bundle_uri = join_uri(cfg.output, "model")
    save_bundle(bundle_uri, model, spec, classes, prep, threshold,
                {"dataset": cfg.dataset, "metrics": _jsonable(metrics), **extra}, storage=cfg.storage)
    summary: dict[str, Any] = {
        "metrics": _jsonable(metrics), "threshold": threshold, "classes": classes,
        "bundle_uri": bundle_uri, "plots": plots, "config_uri": config_uri, "output": cfg.output,
        "history": history, "epochs_trained": len(history), "fp_rounds": fp_rounds,
        "mlflow_run_id": run_id, "model_uri": None, "model_version": None, **extra}
    if run_id:
        summary.update(_log_final(cfg, model, spec, prep, classes, threshold, run_id, metrics, plots))
    atomic_write_text(join_uri(cfg.output, "summary.json"), json.dumps(summary, indent=1, default=str), cfg.storage)
    return summary


def _log_final(cfg, model, spec, prep, classes, threshold, run_id, metrics, plots) -> dict[str, Any]:
    import mlflow

    from medray.storage import local_copy
    from medray.train import tracking
    from medray.train.loop import is_number

    tracking.configure(cfg.mlflow)
    size = cfg.preprocessing.size
    if cfg.model.spatial_dims == 3:  # volumes stream channel-first: N x C x D x H x W
        example = np.zeros((1, cfg.model.in_channels, size, size, size), np.uint8)
    else:
        example = np.zeros((1, size, size, cfg.model.in_channels), np.uint8)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items() if is_number(v)})
        mlflow.set_tag("medray.threshold", f"{threshold:.6g}")
        for name, uri in plots.items():
            mlflow.log_artifact(local_copy(uri, cfg.storage), artifact_path="plots")
        logged = tracking.log_model(model, spec, classes, prep, threshold, cfg.registered_model_name, example)
    return {"model_uri": logged.get("model_uri"), "model_version": logged.get("version")}


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(metrics, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
