"""Steady-state images/s of the Ray Train loop (1 and 2 workers) vs a plain single-process PyTorch loop.

Same decoded data (decoded once, in memory), model, batch size, epochs and torch threads, in one
run. Start-up is left out on both sides: the plain loop times its own epochs, the Ray Train loop
reports each epoch's training pass from inside the worker (``epoch_seconds``, ``train_examples``;
no validation, checkpointing or worker start-up), and only epochs 2.. count (epoch 1 warms up).
With 2 workers the shards are equal, so the figure is 2 x rank 0's images/s. Last line:
``train ratio: <Ray 1-worker images/s / plain images/s>``. Run it on an idle machine: torch threads
beyond the free cores collapse (OpenMP spin-waits), so on a busy one compare at ``--threads 1``.

  python bench/bench_train.py [--patches 2048] [--size 64] [--model smallcnn] [--epochs 4]
                              [--batch-size 32] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT / "tests")]

CLASSES = ["normal", "tumor"]


def plain_loop(images, labels, cfg) -> list[tuple[int, float]]:
    """Single process, no Ray: the worker's model/optimizer/loss/collate; (examples, seconds) per epoch."""
    import numpy as np
    import torch

    from medray.models.preprocess import to_tensor
    from medray.models.registry import build_model
    from medray.train.loop import (build_optimizer, make_preprocessing, mixed_precision, seed_everything,
                                   train_step)

    torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    device = torch.device("cuda" if cfg.scaling.use_gpu else "cpu")
    amp, scaler = mixed_precision(device, cfg.mixed_precision)
    model = build_model(cfg.model).to(device)
    opt = build_optimizer(model.parameters(), cfg.optimizer)
    loss_fn = torch.nn.CrossEntropyLoss()
    prep = make_preprocessing(cfg)
    rng = np.random.default_rng(cfg.seed)
    epochs = []
    for _ in range(cfg.epochs):
        model.train()
        start = time.perf_counter()
        order = rng.permutation(len(images))
        for i in range(0, len(order), cfg.batch_size):
            take = order[i:i + cfg.batch_size]
            x = to_tensor(images[take], prep).contiguous().to(device)
            y = torch.as_tensor(labels[take]).to(device)
            train_step(model, loss_fn, opt, x, y, amp, scaler)  # the Ray Train loop's own step
        if device.type == "cuda":
            torch.cuda.synchronize()
        epochs.append((len(order), time.perf_counter() - start))
    return epochs


def ray_loop(cfg, train_ds, val_ds, workers: int, threads: int) -> tuple[list[dict], float]:
    """One ``fit`` with ``workers`` workers: rank 0's per-epoch history and the wall-clock seconds."""
    from medray.train.trainer import fit, read_checkpoint

    cfg = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"num_workers": workers}),
                                 "num_threads": max(1, threads // workers),
                                 "output": tempfile.mkdtemp(prefix="bench-train-")})
    loop = {"config": cfg, "classes": CLASSES, "class_weights": None, "total_epochs": cfg.epochs}
    start = time.perf_counter()
    result = fit(cfg, train_ds, val_ds, loop)
    wall = time.perf_counter() - start
    assert result.error is None, result.error
    state, _, _ = read_checkpoint(result.checkpoint)
    return state["history"], wall


def steady(pairs: list[tuple[int, float]]) -> float:
    """Images/s over epochs 2.. (all epochs when there is only one)."""
    timed = pairs[1:] or pairs
    return sum(n for n, _ in timed) / sum(s for _, s in timed)


def report_ray(label: str, history: list[dict], wall: float, workers: int, total: int, epochs: int) -> float:
    per_epoch = [(int(h["train_examples"]), float(h["epoch_seconds"])) for h in history]
    rate = workers * steady(per_epoch)
    seconds = ", ".join(f"{s:.2f}" for _, s in per_epoch)
    print(f"{label}: {rate:.1f} images/s steady state (epoch seconds in rank 0: {seconds}; "
          f"{epochs * total / wall:.1f} images/s wall clock with start-up and validation)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=2048, help="training patches (half tumor)")
    parser.add_argument("--size", type=int, default=64, help="patch side length")
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--epochs", type=int, default=4, help="epochs; the first one is not timed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--gpu", action="store_true", help="both loops on the GPU (mixed precision as the "
                        "config's default, bf16); the 2-worker run needs 2 GPUs and is skipped with fewer")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads: the plain loop's, split evenly over the Ray workers")
    args = parser.parse_args()
    for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
                       "DO_NOT_TRACK": "true", "NO_ALBUMENTATIONS_UPDATE": "1"}.items():
        os.environ.setdefault(key, value)
    import numpy as np
    import ray

    from patch_data import write_patch_dataset
    from medray.datasets.reader import read_dataset
    from medray.train.config import TrainConfig
    from medray.train.data import decoded

    tmp = tempfile.mkdtemp(prefix="bench-train-data-")
    write_patch_dataset(tmp, num_groups=4, per_class=max(1, args.patches // 8), size=args.size)
    cfg = TrainConfig.model_validate({
        "dataset": tmp, "model": {"name": args.model}, "preprocessing": {"size": args.size},
        "epochs": args.epochs, "batch_size": args.batch_size, "augment": {"enabled": False},
        "max_failures": 0, "track": False, "num_threads": args.threads,
        "scaling": {"cpus_per_worker": 0.5, "use_gpu": args.gpu}})  # fractional CPUs: 2 workers on 2 cores
    path = os.pathsep.join(p for p in (str(ROOT / "platform"), os.environ.get("PYTHONPATH")) if p)
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})

    # Decode once and materialise, so every loop sees identical in-memory data.
    train_ds = decoded(read_dataset(tmp), cfg, CLASSES).materialize()
    val_ds = train_ds.limit(cfg.batch_size).materialize()
    table = train_ds.to_pandas()
    images = np.stack(table["image"].to_numpy())
    labels = table["label"].to_numpy()
    total = len(images)
    print(f"data: {total} patches {args.size}x{args.size}, model {args.model}, batch {args.batch_size}, "
          f"{args.epochs} epochs (steady state: epochs 2..{args.epochs}), {args.threads} torch threads")
    plain_epochs = plain_loop(images, labels, cfg)
    plain = steady(plain_epochs)
    seconds = ", ".join(f"{s:.2f}" for _, s in plain_epochs)
    print(f"plain PyTorch loop: {plain:.1f} images/s steady state (epoch seconds: {seconds})")
    history, wall = ray_loop(cfg, train_ds, val_ds, 1, args.threads)
    one = report_ray("Ray Train, 1 worker", history, wall, 1, total, args.epochs)
    if not args.gpu or ray.cluster_resources().get("GPU", 0) >= 2:
        history, wall = ray_loop(cfg, train_ds, val_ds, 2, args.threads)
        report_ray("Ray Train, 2 workers", history, wall, 2, total, args.epochs)
    else:
        print("Ray Train, 2 workers: skipped (needs 2 GPUs; nccl cannot put two ranks on one GPU)")
    ray.shutdown()
    print(f"train ratio: {one / plain:.3f}")


if __name__ == "__main__":
    main()
