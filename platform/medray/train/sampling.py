"""Class balance and model-bootstrapped false-positive (FP) oversampling.

Pure functions decide (weights, repeat factors, which negatives are FPs); thin Ray helpers apply
them to a Ray Dataset of encoded rows: FP rows are repeated k times and unioned with the base
stream, so the next round sees each hard negative k extra times.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medray.allocator import with_malloc_env


def class_weights(counts: list[int] | np.ndarray) -> np.ndarray:
    """Inverse-frequency loss weights: each present class gets the same total weight (absent: 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return weights


def balance_repeats(counts: list[int] | np.ndarray) -> np.ndarray:
    """Integer repeat factor per class so every class appears about as often as the largest one."""
    counts = np.asarray(counts, dtype=np.float64)
    repeats = np.ones(len(counts), dtype=np.int64)
    present = counts > 0
    repeats[present] = np.maximum(1, np.round(counts[present].max() / counts[present])).astype(np.int64)
    return repeats


def select_false_positives(scores: np.ndarray, labels: np.ndarray, negative_label: int, threshold: float,
                           max_count: int | None = None) -> np.ndarray:
    """Indices of negatives scored >= ``threshold``, highest score first (ties by index), capped."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    candidates = np.flatnonzero((labels == negative_label) & (scores >= threshold))
    order = np.lexsort((candidates, -scores[candidates]))
    chosen = candidates[order]
    return chosen if max_count is None else chosen[:max_count]


def repeat_indices(indices: np.ndarray, repeats: int) -> np.ndarray:
    """Each index ``repeats`` times (k-fold oversampling of the selected rows)."""
    return np.repeat(np.asarray(indices, dtype=np.int64), int(repeats))


# ---- thin Ray parts --------------------------------------------------------------------------

def repeat_rows_by_class(batch, label_repeats: dict[str, int]):
    """``map_batches`` fn (pyarrow): repeat each row ``label_repeats[label_name]`` times."""
    names = batch.column("label_name").to_pylist()
    take = [i for i, name in enumerate(names) for _ in range(int(label_repeats.get(name, 1)))]
    return batch.take(take)


def balance_plan(class_counts: dict[str, int]) -> dict[str, int]:
    """Repeat factor per class name (``balance_repeats`` keyed by name)."""
    names = list(class_counts)
    return {n: int(r) for n, r in zip(names, balance_repeats([class_counts[n] for n in names]))}


def balanced_dataset(ds, label_repeats: dict[str, int]):
    """Repeat each row ``label_repeats[label_name]`` times (a ``balance_plan``), so classes appear
    about equally often in each epoch."""
    if all(r == 1 for r in label_repeats.values()):
        return ds
    return ds.map_batches(repeat_rows_by_class, batch_format="pyarrow", fn_kwargs={"label_repeats": label_repeats})


def false_positive_round(scored_ds, negative_class: str, threshold: float, repeats: int,
                         max_per_round: int | None) -> tuple[Any, dict[str, int]]:
    """From a dataset with a ``score`` column: the FP rows repeated k times (a Ray Dataset) + counts.

    Filtering runs in Ray; only the false-positive rows (few, by construction) reach the driver.
    """
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401  (pa.compute)
    import ray.data

    flagged = scored_ds.map_batches(_flag_negatives, batch_format="pyarrow",
                                    fn_kwargs={"name": negative_class, "threshold": threshold})
    tables = [t for t in flagged.iter_batches(batch_format="pyarrow", batch_size=None) if t.num_rows]
    negatives = sum(int(pa.compute.sum(t.filter(t["_marker"])["_negatives"]).as_py() or 0) for t in tables)
    tables = [t.filter(pa.compute.invert(t["_marker"])) for t in tables]
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        return None, {"negatives": negatives, "false_positives": 0, "added_rows": 0}
    scores = table.column("score").to_numpy()
    chosen = select_false_positives(scores, np.zeros(len(scores), np.int64), 0, threshold, max_per_round)
    counts = {"negatives": negatives, "false_positives": int(len(chosen)), "added_rows": int(len(chosen) * repeats)}
    rows = table.drop_columns(["score", "_marker", "_negatives"]).take(pa.array(repeat_indices(chosen, repeats)))
    return ray.data.from_arrow(rows), counts


def _flag_negatives(batch, name: str, threshold: float):
    """Keep negatives scored >= threshold, plus one marker row carrying the batch's negative count."""
    import pyarrow as pa
    import pyarrow.compute as pc

    is_neg = pc.equal(batch["label_name"], pa.scalar(name))
    n_neg = int(pc.sum(pc.cast(is_neg, pa.int64())).as_py() or 0)
    kept = batch.filter(pc.and_(is_neg, pc.greater_equal(batch["score"], pa.scalar(threshold))))
    marker = batch.slice(0, 1 if n_neg else 0)  # one row per call carries the call's negative count
    out = pa.concat_tables([kept, marker])
    flags = [False] * kept.num_rows + [True] * marker.num_rows
    out = out.append_column("_marker", pa.array(flags, pa.bool_()))
    return out.append_column("_negatives", pa.array([n_neg] * out.num_rows, pa.int64()))


def _keep_class(batch, name: str):
    import pyarrow as pa
    import pyarrow.compute as pc

    return batch.filter(pc.equal(batch["label_name"], pa.scalar(name)))


class ScoreRows:
    """Actor (model loaded once): add a ``score`` column = P(positive class) to encoded rows."""

    def __init__(self, config, classes: list[str], state_dict: dict, positive: int) -> None:
        import torch

        from medray.models.registry import build_model
        from medray.train.loop import as_config, make_preprocessing

        self.cfg = as_config(config)
        self.classes = classes
        spec = self.cfg.model.model_copy(update={"num_classes": len(classes), "pretrained": None})
        self.model = build_model(spec)
        self.model.load_state_dict(state_dict)
        self.model.eval()
        self.prep = make_preprocessing(self.cfg)
        self.positive = positive
        self.torch = torch

    def __call__(self, batch):
        import pyarrow as pa

        from medray.models.preprocess import to_tensor
        from medray.train.data import decode_batch

        cols = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in ("image", "encoding", "label_name")}
        decoded = decode_batch(cols, self.classes, self.cfg.preprocessing.size, self.cfg.model.in_channels)
        with self.torch.no_grad():
            logits = self.model(to_tensor(decoded["image"], self.prep))
            scores = self.torch.softmax(logits.float(), dim=1)[:, self.positive].numpy()
        return batch.append_column("score", pa.array(scores.astype(np.float64)))


def positive_index(classes: list[str], negative_class: str, positive_class: str | None) -> int:
    """Index of the class whose probability scores a negative (binary: the non-negative class)."""
    from medray.errors import ConfigError

    if negative_class not in classes:
        raise ConfigError(f"fp_oversampling.negative_class {negative_class!r} is not one of {classes}")
    if positive_class is not None:
        if positive_class not in classes:
            raise ConfigError(f"fp_oversampling.positive_class {positive_class!r} is not one of {classes}")
        return classes.index(positive_class)
    others = [i for i, c in enumerate(classes) if c != negative_class]
    if len(others) != 1:
        raise ConfigError(f"fp_oversampling.positive_class must be set with {len(classes)} classes: {classes}")
    return others[0]


def score_and_select(cfg, classes: list[str], state_dict: dict, train_encoded) -> tuple[Any, dict[str, int]]:
    """Score the training negatives with the current model (actor pool) and take the FPs, k-fold."""
    import ray.data

    fp = cfg.fp_oversampling
    positive = positive_index(classes, fp.negative_class, fp.positive_class)
    negatives = train_encoded.map_batches(_keep_class, batch_format="pyarrow",
                                          fn_kwargs={"name": fp.negative_class})
    scored = negatives.map_batches(
        ScoreRows, batch_format="pyarrow", batch_size=64, compute=ray.data.ActorPoolStrategy(size=1),
        fn_constructor_kwargs={"config": cfg, "classes": classes, "state_dict": state_dict, "positive": positive},
        **with_malloc_env({"num_cpus": 0.5}))
    return false_positive_round(scored, fp.negative_class, fp.threshold, fp.repeats, fp.max_per_round)
