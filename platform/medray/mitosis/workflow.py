"""Driver steps: ``prepare`` (proposals → labelled patch datasets, split by image) and ``train``
(shared trainer, then the F1-optimal detection threshold on validation images, stored in the bundle)."""

from __future__ import annotations

import json

from medray.mitosis.config import MitosisConfig
from medray.storage import atomic_write_text, join_uri, read_text


def prepare(cfg: MitosisConfig) -> dict:
    """Split images into train/val and write ``<output>/patches/{train,val}`` + ``split.json``."""
    from medray.mitosis.inputs import collect_units
    from medray.mitosis.patches import _mimics_by_image, split_units, write_patch_dataset

    units = collect_units(cfg.inputs, cfg.storage)
    train_units, val_units = split_units(units, cfg.patches.val_fraction, cfg.patches.seed)
    mimics = _mimics_by_image(cfg.inputs.hpf_dir, cfg.storage)
    out = {}
    for name, part in (("train", train_units), ("val", val_units)):
        out[name] = write_patch_dataset(part, join_uri(cfg.output, "patches", name), cfg, mimics, desc=name)
    split = {name: [u.to_dict() for u in part] for name, part in (("train", train_units), ("val", val_units))}
    atomic_write_text(join_uri(cfg.output, "split.json"), json.dumps(split, indent=1), cfg.storage)
    return {"split": {k: [u["unit_id"] for u in v] for k, v in split.items()}, **out}


def resolved_train_config(cfg: MitosisConfig):
    """``cfg.train`` with dataset, val_dataset and output defaulting to the prepare outputs."""
    fill = {}
    if "dataset" not in cfg.train.model_fields_set:
        fill["dataset"] = join_uri(cfg.output, "patches", "train")
    if "val_dataset" not in cfg.train.model_fields_set:
        fill["val_dataset"] = join_uri(cfg.output, "patches", "val")
    if "output" not in cfg.train.model_fields_set:
        fill["output"] = join_uri(cfg.output, "train")
    if "storage" not in cfg.train.model_fields_set:
        fill["storage"] = cfg.storage
    return cfg.train.model_copy(update=fill)


def val_units(cfg: MitosisConfig) -> list:
    from medray.mitosis.inputs import WorkUnit

    split = json.loads(read_text(join_uri(cfg.output, "split.json"), cfg.storage))
    return [WorkUnit(u["unit_id"], image=u["image"], truth_csv=u["truth_csv"], slide=u["slide"],
                     region=tuple(u["region"]) if u["region"] else None) for u in split["val"]]


def tune_threshold(cfg: MitosisConfig, model_uri: str, units: list) -> dict:
    """F1-optimal threshold after clustering with the matching criterion, over ``units``; the
    bundle is re-saved with it (``threshold`` and ``extra['mitosis']``)."""
    from medray.mitosis.inputs import load_unit
    from medray.mitosis.matching import best_threshold
    from medray.mitosis.proposals import propose
    from medray.mitosis.scoring import score_points
    from medray.models.bundle import load_model, save_bundle

    model = load_model(model_uri, cfg.storage)
    per_image = {}
    for unit in units:
        rgb, truth, _ = load_unit(unit, cfg.storage)
        points = propose(rgb, cfg.proposals, storage=cfg.storage)
        per_image[unit.unit_id] = (points, score_points(model, rgb, points, cfg.patches.size,
                                                        cfg.detect.batch_size), truth)
    threshold, scores = best_threshold(per_image, cfg.matching.radius, cfg.clustering.distance)
    info = {"threshold": threshold, "val_f1": scores["f1"], "val_counts": scores,
            "cluster_distance": cfg.clustering.distance, "match_radius": cfg.matching.radius,
            "patch_size": cfg.patches.size, "proposals": cfg.proposals.model_dump(mode="json"),
            "val_images": sorted(per_image)}
    save_bundle(model_uri, model.model, model.spec, model.classes, model.preprocessing, threshold,
                {**model.extra, "classifier_threshold": model.threshold, "mitosis": info}, storage=cfg.storage)
    return info


def train(cfg: MitosisConfig, resume: bool = False) -> dict:
    """Train the stage-2 classifier with the shared trainer, then tune and store the threshold."""
    from medray.train.trainer import train as train_classifier

    tcfg = resolved_train_config(cfg)
    summary = train_classifier(tcfg, resume=resume)
    info = tune_threshold(cfg, summary["bundle_uri"], val_units(cfg))
    result = {"bundle_uri": summary["bundle_uri"], "classifier_metrics": summary["metrics"],
              "fp_rounds": summary.get("fp_rounds"), "mitosis": info}
    atomic_write_text(join_uri(cfg.output, "train_summary.json"), json.dumps(result, indent=1, default=str),
                      cfg.storage)
    return result
