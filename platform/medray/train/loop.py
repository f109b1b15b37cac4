"""The per-worker training loop run by Ray Train: stream the shard, DDP step, validate, checkpoint.

Every epoch ends with ``ray.train.report``: each worker reports what its own training pass saw
and how fast (``train_examples``, ``train_examples_<class>``, ``epoch_seconds``,
``train_images_per_s``: the pass over its shard, without validation or checkpointing); rank 0
attaches a checkpoint (unwrapped state dict, optimizer, epoch, validation scores, history); a
restarted worker group resumes from ``ray.train.get_checkpoint()`` instead of starting over.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import tempfile
import time
from typing import Any

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn

CHECKPOINT_FILE = "state.pt"
VAL_FILE = "val_scores.npz"
SHUFFLE_BATCHES = 8  # local shuffle buffer, in batches


def as_config(config):
    """A ``TrainConfig`` from the object itself (keeps secret storage credentials) or its dump."""
    from medray.train.config import TrainConfig

    return config if isinstance(config, TrainConfig) else TrainConfig.model_validate(config)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU results are then repeatable for a fixed data order)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_preprocessing(cfg):
    """The ``Preprocessing`` record stored with the model (what ``to_tensor`` does to a batch)."""
    from medray.models.preprocess import Preprocessing

    return Preprocessing(spatial_dims=cfg.model.spatial_dims, channels=cfg.model.in_channels,
                         size=cfg.preprocessing.size, mean=list(cfg.preprocessing.mean),
                         std=list(cfg.preprocessing.std))


def build_optimizer(params, opt) -> torch.optim.Optimizer:
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def predict_scores(model: nn.Module, batches, device, amp_dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels over an iterable of (x, y) batches, in eval mode."""
    model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for x, y in batches:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x.to(device))
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            labels.append(y.cpu().numpy())
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(probs), np.concatenate(labels)


def mixed_precision(device: torch.device, precision: str):
    """(autocast dtype or None, GradScaler or None): AMP on a GPU only; fp16 needs the scaler."""
    if device.type != "cuda" or precision == "none":
        return None, None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return dtype, torch.amp.GradScaler("cuda") if dtype == torch.float16 else None


def train_step(model: nn.Module, loss_fn, optimizer, x: torch.Tensor, y: torch.Tensor, amp_dtype=None,
               scaler=None) -> torch.Tensor:
    """One optimizer step (autocast to ``amp_dtype`` when set; fp16 goes through ``scaler``); the loss."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = loss_fn(model(x), y)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss


FAILURE_MARKER = "_failure_injected"


def inject_failure(cfg, epoch: int, rank: int) -> None:
    """Testing hook (``cfg.inject_failure``): fail once at the start of ``epoch`` (0-based) on one rank.

    A marker file under the output is written first, so the restarted worker group does not fail
    again. ``kill`` first waits until the controller has collected this worker's last report (else
    the crash would also lose the epoch's checkpoint registration, a different scenario), then
    SIGKILLs the process: no exception, no cleanup, Ray Train only sees the actor die.
    """
    from medray.storage import atomic_write_text, exists, join_uri

    hook = cfg.inject_failure
    marker = join_uri(cfg.output, FAILURE_MARKER)
    if hook.epoch != epoch + 1 or hook.rank != rank or exists(marker, cfg.storage):
        return
    atomic_write_text(marker, f"{hook.mode} rank {rank} pid {os.getpid()} at epoch {epoch + 1}\n", cfg.storage)
    if hook.mode == "raise":
        raise RuntimeError(f"injected failure at epoch {epoch + 1} (inject_failure)")
    if epoch > 0:
        _wait_report_collected()
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_report_collected(timeout_s: float = 60.0) -> None:
    """Block until the Ray Train controller has polled this worker's pending report (Ray internals)."""
    from ray.train.v2._internal.execution.context import get_train_context

    reports = get_train_context().execution_context.result_queue
    deadline = time.monotonic() + timeout_s
    while reports.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # let the poll's reply (carrying the report) reach the controller


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry: ``loop_config`` holds the resolved config, classes, class weights, total epochs."""
    import ray.train
    import ray.train.torch

    from medray.models.registry import build_model
    from medray.train.metrics import best_f1_threshold, classification_metrics

    cfg = as_config(loop_config["config"])
    classes: list[str] = loop_config["classes"]
    total_epochs: int = loop_config["total_epochs"]
    round_index: int = loop_config.get("round", 0)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    device = ray.train.torch.get_device()
    amp_dtype, scaler = mixed_precision(device, cfg.mixed_precision)

    model = build_model(cfg.model.model_copy(update={"num_classes": len(classes)}), cfg.storage)
    start_epoch, history, state = 0, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        start_epoch, history = int(state["epoch"]), list(state.get("history", []))
    model = ray.train.torch.prepare_model(model)  # device + DDP (gloo on CPU, nccl on GPU)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)  # after the move: state on the device
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])

    weight = loop_config.get("class_weights")
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weight, dtype=torch.float32, device=device) if weight else None)
    prep = make_preprocessing(cfg)

    from medray.train.data import augmentation

    augment = augmentation(cfg)  # on the worker: it knows the epoch (see medray.train.data)
    collate, val_collate = ToTensorCollate(prep, augment), ToTensorCollate(prep)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    positive = 1 if len(classes) == 2 else None
    for epoch in range(start_epoch, total_epochs):
        if cfg.inject_failure.epoch is not None:
            inject_failure(cfg, epoch, rank)
        model.train()
        total, seen = 0.0, 0
        per_class = torch.zeros(len(classes), dtype=torch.int64, device=device)  # batches may arrive on the GPU
        started = time.perf_counter()
        if augment is not None:
            augment.epoch = epoch
        # seeded local shuffle: mixes classes within batches, same order for the same seed and epoch
        # the collate (augmentation included) runs in a pool of prefetch_batches threads (Ray caps it at 4)
        for x, y in train_shard.iter_torch_batches(batch_size=cfg.batch_size, collate_fn=collate,
                                                   prefetch_batches=collate_threads(cfg, augment),
                                                   local_shuffle_buffer_size=SHUFFLE_BATCHES * cfg.batch_size,
                                                   local_shuffle_seed=cfg.seed * 1000 + epoch):
            per_class += torch.bincount(y, minlength=len(classes))
            x, y = x.to(device), y.to(device)
            loss = train_step(model, loss_fn, optimizer, x, y, amp_dtype, scaler)
            total += float(loss.detach()) * len(y)
            seen += len(y)
        seconds = time.perf_counter() - started  # the training pass only (no validation/checkpoint)
        metrics: dict[str, Any] = {"epoch": epoch + 1, "round": round_index, "start_epoch": start_epoch,
                                   "train_loss": total / max(seen, 1), "train_examples": seen, "rank": rank,
                                   "epoch_seconds": seconds, "train_images_per_s": seen / max(seconds, 1e-9)}
        metrics.update({f"train_examples_{metric_key(name)}": int(n) for name, n in zip(classes, per_class.tolist())})
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                batches = val_shard.iter_torch_batches(batch_size=max(cfg.batch_size, 64), collate_fn=val_collate)
                probs, labels = predict_scores(unwrap(model), batches, device, amp_dtype)
                threshold = 0.5
                if positive is not None and len(labels) and len(np.unique(labels)) > 1:
                    threshold = float(best_f1_threshold(labels == positive, probs[:, positive])[0])
                val = classification_metrics(labels, probs, classes, threshold) if len(labels) else {}
                metrics.update({f"val_{k}": float(v) for k, v in val.items() if is_number(v)})
                metrics["threshold"] = threshold
                history.append({k: v for k, v in metrics.items() if is_number(v)})
                torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                            "epoch": epoch + 1, "threshold": threshold, "classes": classes,
                            "history": history}, os.path.join(tmp, CHECKPOINT_FILE))
                np.savez(os.path.join(tmp, VAL_FILE), probs=probs, labels=labels)
                with open(os.path.join(tmp, "metrics.json"), "w") as fh:
                    json.dump(metrics, fh)
                _log_mlflow_epoch(loop_config, metrics)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch-{epoch + 1:04d}")


def collate_threads(cfg, augment) -> int:
    """Batches prefetched (= collate threads) on a worker: 1 without augmentation (Ray's default);
    with it, one per reserved CPU from 2 to 4, so augmenting overlaps the training step."""
    if augment is None:
        return 1
    return int(min(4, max(2, cfg.scaling.cpus_per_worker)))


class ToTensorCollate(NumpyBatchCollateFn):
    """Collate for ``iter_torch_batches``: uint8 NHWC images (augmented first, when given an
    ``EpochAugment``) → normalised NCHW float, labels → int64."""

    def __init__(self, prep, augment=None) -> None:
        self.prep = prep
        self.augment = augment

    def __call__(self, batch: dict[str, np.ndarray]):
        from medray.models.preprocess import to_tensor

        images = batch["image"] if self.augment is None else self.augment(batch["image"])
        return to_tensor(images, self.prep).contiguous(), torch.as_tensor(batch["label"])


def metric_key(name: str) -> str:
    """A class name as part of a metric key (MLflow allows letters, digits and ``_-. /:``)."""
    return re.sub(r"[^\w\-. /:]", "_", str(name))


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _log_mlflow_epoch(loop_config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Rank 0 only: per-epoch metrics into the run the driver opened."""
    run_id = loop_config.get("mlflow_run_id")
    if not run_id:
        return
    from mlflow.tracking import MlflowClient

    log_metrics_batch(MlflowClient(tracking_uri=loop_config["mlflow_tracking_uri"]), run_id,
                      {k: v for k, v in metrics.items() if k not in ("epoch", "rank")}, int(metrics["epoch"]))


def log_metrics_batch(client: Any, run_id: str, metrics: dict[str, Any], step: int) -> None:
    """The numeric ``metrics`` at ``step`` in one MLflow call (one store write, not one per key)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key, float(v), now, step) for key, v in metrics.items() if is_number(v)]
    if batch:
        client.log_batch(run_id, metrics=batch)
