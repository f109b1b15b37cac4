"""Images/s of the Ray Train loop (1 and 2 workers) vs a plain single-process PyTorch loop.

Same decoded data, model, batch size and epochs, measured in one run. Last line:
``train ratio: <ray 1-worker images/s ÷ plain images/s>``.

  python bench/bench_train.py [--patches 512] [--size 64] [--model smallcnn] [--epochs 2]
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


def plain_loop(images, labels, cfg) -> float:
    """Single process: the same model/optimizer/batches as a Ray worker, no Ray."""
    import torch

    from medray.models.preprocess import to_tensor
    from medray.models.registry import build_model
    from medray.train.loop import build_optimizer, make_preprocessing, seed_everything

    seed_everything(cfg.seed)
    model = build_model(cfg.model)
    opt = build_optimizer(model.parameters(), cfg.optimizer)
    loss_fn = torch.nn.CrossEntropyLoss()
    prep = make_preprocessing(cfg)
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        for i in range(0, len(images), cfg.batch_size):
            x = to_tensor(images[i:i + cfg.batch_size], prep)
            y = torch.as_tensor(labels[i:i + cfg.batch_size])
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    return cfg.epochs * len(images) / (time.perf_counter() - start)


def ray_loop(cfg, train_ds, val_ds, workers: int) -> float:
    from medray.train.trainer import fit

    cfg = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"num_workers": workers}),
                                 "output": tempfile.mkdtemp(prefix="bench-train-")})
    n = train_ds.count()
    loop = {"config": cfg, "classes": ["normal", "tumor"], "class_weights": None,
            "total_epochs": cfg.epochs}
    start = time.perf_counter()
    result = fit(cfg, train_ds, val_ds, loop)
    elapsed = time.perf_counter() - start
    assert result.error is None, result.error
    return cfg.epochs * n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patches", type=int, default=512, help="training patches (half tumor)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import numpy as np
    import ray

    from patch_data import write_patch_dataset
    from medray.train.config import TrainConfig

    tmp = tempfile.mkdtemp(prefix="bench-train-data-")
    write_patch_dataset(tmp, num_groups=4, per_class=args.patches // 8, size=args.size)
    cfg = TrainConfig.model_validate({
        "dataset": tmp, "model": {"name": args.model}, "preprocessing": {"size": args.size},
        "epochs": args.epochs, "batch_size": args.batch_size, "augment": {"enabled": False}, "max_failures": 0})
    ray.init(include_dashboard=False, log_to_driver=False)
    from medray.datasets.reader import read_dataset
    from medray.train.data import decoded

    # Decode once and materialise, so both loops see identical in-memory data.
    train_ds = decoded(read_dataset(tmp), cfg, ["normal", "tumor"], train=False).materialize()
    val_ds = train_ds.limit(cfg.batch_size).materialize()
    batch = train_ds.to_pandas()
    images = np.stack(batch["image"].to_numpy())
    labels = batch["label"].to_numpy()
    print(f"data: {len(images)} patches {args.size}x{args.size}, model {args.model}, batch {args.batch_size}")
    plain = plain_loop(images, labels, cfg)
    print(f"plain PyTorch loop: {plain:.1f} images/s")
    one = ray_loop(cfg, train_ds, val_ds, 1)
    print(f"Ray Train, 1 worker: {one:.1f} images/s (includes worker start-up and validation)")
    two = ray_loop(cfg, train_ds, val_ds, 2)
    print(f"Ray Train, 2 workers: {two:.1f} images/s")
    ray.shutdown()
    print(f"train ratio: {one / plain:.3f}")


if __name__ == "__main__":
    main()
