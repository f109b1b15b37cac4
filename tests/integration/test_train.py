"""Ray Train end to end on synthetic tumor/normal patches: learning, recovery, resume, FP rounds, MLflow.

Fits are expensive, so module-scoped fixtures run each fit once and several tests inspect it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from patch_data import write_patch_dataset

NEGATIVES_IN_TRAIN = 120  # 4 training slides x 30 normal patches (2 of 6 slides held out)


@pytest.fixture(scope="module")
def patches(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("patches") / "ds")
    write_patch_dataset(uri, num_groups=6, per_class=30, size=32, seed=0)
    return uri


def _config(patches, output, **over):
    from medray.config.base import validate_config
    from medray.train.config import TrainConfig

    data = {"dataset": patches, "output": str(output), "model": {"name": "smallcnn"},
            "preprocessing": {"size": 32}, "epochs": 2, "batch_size": 16, "seed": 1, "num_threads": 1,
            "optimizer": {"lr": 0.003}, "augment": {"enabled": False}, "split": {"val_fraction": 0.34},
            "track": False}
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return validate_config(TrainConfig, data)


def _val_images(uri, n):
    import pyarrow.parquet as pq

    from medray.datasets.codec import decode_image
    from medray.datasets.reader import read_info

    table = pq.read_table(read_info(uri).shards[0]["uri"])
    return [decode_image(table["image"][i].as_py(), "png") for i in range(n)]


def _all_images(uri):
    import pyarrow.parquet as pq

    from medray.datasets.codec import decode_image
    from medray.datasets.reader import read_info

    images, labels = [], []
    for shard in read_info(uri).shards:
        table = pq.read_table(shard["uri"])
        images += [decode_image(b, "png") for b in table["image"].to_pylist()]
        labels += table["label"].to_pylist()
    return np.stack(images), np.array(labels)


# ---- one run with an injected worker failure, tracked in MLflow; then resumed from the CLI ----

@pytest.fixture(scope="module")
def recovered(ray_cluster, patches, tmp_path_factory):
    """2 epochs; the worker fails at the start of epoch 2 and the run recovers from epoch 1."""
    from medray.train.trainer import train

    root = tmp_path_factory.mktemp("recovered")
    mlflow_uri = f"sqlite:///{root}/mlflow.db"
    cfg = _config(patches, root / "out", epochs=2, inject_failure={"epoch": 2}, max_failures=1, track=True,
                  augment={"enabled": True}, mlflow={"tracking_uri": mlflow_uri},
                  registered_model_name="patches-smallcnn")
    return {"cfg": cfg, "summary": train(cfg), "out": root / "out", "mlflow_uri": mlflow_uri}


def test_failed_worker_resumes_from_checkpoint_and_learns(recovered):
    summary, out = recovered["summary"], recovered["out"]
    marker = (out / "_failure_injected").read_text()  # the failure really happened
    assert marker.startswith("raise rank 0 pid ") and marker.endswith(" at epoch 2\n")
    assert [h["epoch"] for h in summary["history"]] == [1, 2]  # each epoch once: not restarted
    assert summary["history"][-1]["start_epoch"] == 1  # the new worker group began after epoch 1
    assert summary["metrics"]["roc_auc"] > 0.9
    assert 0 < summary["threshold"] < 1
    for name in ("roc.png", "confusion.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert "epochs: 2" in (out / "resolved_config.yaml").read_text()
    assert json.loads((out / "summary.json").read_text())["metrics"] == summary["metrics"]


def test_mlflow_run_has_params_metrics_lineage_and_loadable_model(recovered, patches):
    from mlflow.tracking import MlflowClient

    from medray.models.bundle import load_model

    summary = recovered["summary"]
    client = MlflowClient(tracking_uri=recovered["mlflow_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["model.name"] == "smallcnn"
    assert run.data.params["epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_roc_auc")] == [1, 2]
    assert run.data.params["data.train.groups"] == "4" and run.data.params["data.val.groups"] == "2"
    assert run.data.tags["medray.dataset.uri"] == patches
    assert run.data.tags["medray.dataset.fingerprint"] == run.data.params["data.fingerprint"]
    assert summary["model_uri"] == f"models:/patches-smallcnn/{summary['model_version']}"

    x = np.stack([np.asarray(a) for a in _val_images(patches, 8)])
    registered = load_model(summary["model_uri"])
    bundle = load_model(summary["bundle_uri"])
    assert registered.classes == bundle.classes == ["normal", "tumor"]
    assert np.allclose(registered.predict_proba(x), bundle.predict_proba(x), atol=1e-5)


def test_rerun_is_refused_and_cli_resume_continues(recovered, patches):
    from mlflow.tracking import MlflowClient

    from medray.cli import main
    from medray.errors import ConfigError
    from medray.train.trainer import train

    cfg, out = recovered["cfg"], recovered["out"]
    with pytest.raises(ConfigError, match="pass --resume"):  # a plain rerun must not reuse the output
        train(cfg)
    with pytest.raises(ConfigError, match="holds no checkpoints"):
        train(cfg.model_copy(update={"output": str(out.parent / "empty")}), resume=True)
    args = ["train", "dataset=" + patches, "output=" + str(out), "model.name=smallcnn",
            "preprocessing.size=32", "epochs=3", "batch_size=16", "seed=1", "num_threads=1",
            "optimizer.lr=0.003", "augment.enabled=true", "split.val_fraction=0.34",
            "track=true", f"mlflow.tracking_uri={recovered['mlflow_uri']}", "--resume"]
    assert main(args) == 0
    resumed = json.loads((out / "summary.json").read_text())
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][-1]["start_epoch"] == 2  # continued after epoch 2's checkpoint
    assert resumed["mlflow_run_id"] == recovered["summary"]["mlflow_run_id"]
    client = MlflowClient(tracking_uri=recovered["mlflow_uri"])
    assert [m.step for m in client.get_metric_history(resumed["mlflow_run_id"], "val_roc_auc")] == [1, 2, 3]


# ---- balanced sampling through the real trainer, on imbalanced data ----

def test_balanced_sampling_balances_the_training_stream(ray_cluster, tmp_path):
    """1 tumor : 4 normal patches; ``balanced_sampling`` repeats tumor rows 4x, so the worker really
    trains on as many tumor as normal examples each epoch, and MLflow holds both sets of counts."""
    from mlflow.tracking import MlflowClient

    from medray.train.trainer import train

    data = str(tmp_path / "imbalanced")
    write_patch_dataset(data, num_groups=3, per_class=20, size=16, seed=2, tumor_fraction=0.2)
    mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"
    summary = train(_config(data, tmp_path / "out", epochs=1, preprocessing={"size": 16},
                            imbalance="balanced_sampling", track=True, mlflow={"tracking_uri": mlflow_uri}))
    (epoch,) = summary["history"]
    # 2 training slides x (32 normal + 8 tumor); the tumor rows 4x
    assert (epoch["train_examples_normal"], epoch["train_examples_tumor"]) == (64, 64)
    assert epoch["train_examples"] == 128
    assert summary["train_stream_counts"] == {"normal": 64, "tumor": 64}

    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(summary["mlflow_run_id"])
    params = run.data.params
    assert (params["data.train.n_normal"], params["data.train.n_tumor"]) == ("64", "16")  # the split
    assert (params["data.train_stream.n_normal"], params["data.train_stream.n_tumor"]) == ("64", "64")
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train_examples_tumor")] == [64]


# ---- false-positive oversampling (its first round doubles as the reproducibility reference) ----

@pytest.fixture(scope="module")
def fp_run(ray_cluster, patches, tmp_path_factory):
    """1 epoch, then one FP round: every negative scores >= 1e-6, so the 5 highest are taken, 3x each."""
    from medray.train.trainer import train

    cfg = _config(patches, tmp_path_factory.mktemp("fp") / "out", epochs=1, augment={"enabled": True},
                  fp_oversampling={"rounds": 1, "repeats": 3, "threshold": 1e-6, "max_per_round": 5,
                                   "negative_class": "normal"})
    return train(cfg)


def test_fp_oversampling_round_adds_false_positives(fp_run):
    (round1,) = fp_run["fp_rounds"]
    assert round1 == {"negatives": NEGATIVES_IN_TRAIN, "false_positives": 5, "added_rows": 15, "round": 1}
    first, second = fp_run["history"]
    assert first["train_examples"] == 240  # 4 training slides x 60 patches
    assert second["train_examples"] == 240 + 15
    assert (second["epoch"], second["round"], second["start_epoch"]) == (2, 1, 1)


def test_same_seed_same_val_metrics(recovered, fp_run):
    """Two independent runs with the same seed (augmentation on) give identical epoch-1 results on CPU.

    The recovery run and the FP run share every setting that shapes epoch 1 (their later epochs differ).
    """
    first, other = recovered["summary"]["history"][0], fp_run["history"][0]
    timing = {"epoch_seconds", "train_images_per_s"}
    keys = [k for k in first if k.startswith(("val_", "train_")) and k not in timing or k == "threshold"]
    assert "val_roc_auc" in keys and "train_loss" in keys
    assert {k: other[k] for k in keys} == {k: first[k] for k in keys}


# ---- two DDP workers (gloo), checkpoints + bundle on the loopback S3 bucket; one worker is killed ----

def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_two_workers_ddp_with_s3_output_survive_a_killed_worker(ray_cluster, patches, s3_bucket, s3_options):
    """Rank 0 (the one writing checkpoints) SIGKILLs itself at the start of epoch 2: no exception,
    Ray Train sees a dead actor (a WorkerGroupError, counted against ``max_failures``), starts a new
    group of 2 workers, and that group resumes from epoch 1's checkpoint on S3."""
    from medray.models.bundle import load_model
    from medray.storage import exists, join_uri, list_files, read_text
    from medray.train.trainer import train

    output = join_uri(s3_bucket, "runs", "ddp")
    summary = train(_config(patches, output, epochs=2, storage=s3_options.model_dump(), max_failures=1,
                            scaling={"num_workers": 2, "cpus_per_worker": 0.5},
                            inject_failure={"epoch": 2, "mode": "kill", "rank": 0}))
    mode, _, rank, _, pid, *_ = read_text(join_uri(output, "_failure_injected"), s3_options).split()
    assert (mode, rank) == ("kill", "0")
    assert not _alive(int(pid))  # the worker process itself is gone, not an exception caught in it
    history = summary["history"]
    assert [h["epoch"] for h in history] == [1, 2]  # each epoch once: nothing repeated or skipped
    assert [h["start_epoch"] for h in history] == [0, 1]  # the new group began after epoch 1
    assert [h["train_examples"] for h in history] == [120, 120]  # each worker saw half of the 240 patches
    assert summary["metrics"]["roc_auc"] > 0.9
    checkpoints = list_files(join_uri(output, "checkpoints", "run"), s3_options)
    assert any(uri.endswith("epoch-0002/state.pt") for uri in checkpoints)
    for name in ("summary.json", "resolved_config.yaml", "plots/roc.png", "model/bundle.json"):
        assert exists(join_uri(output, name), s3_options), name
    model = load_model(summary["bundle_uri"], s3_options)
    assert model.predict_proba(np.stack(_val_images(patches, 4))).shape == (4, 2)


def test_transfer_head_learns(ray_cluster, patches, tmp_path):
    from medray.models.bundle import load_model
    from medray.train.trainer import train

    summary = train(_config(patches, tmp_path / "tr", mode="transfer"))
    assert summary["metrics"]["roc_auc"] > 0.9
    # the published net (backbone + folded head) scores like the head on the embedded features
    model = load_model(summary["bundle_uri"])
    images, labels = _all_images(patches)
    assert roc_auc_score(labels, model.predict_proba(images)[:, 1]) > 0.9


def test_bad_model_name_and_mismatched_weights(ray_cluster, patches, tmp_path):
    import torch

    from medray.errors import ConfigError, ModelError
    from medray.models.registry import ModelSpec, build_model
    from medray.train.trainer import train

    with pytest.raises(ConfigError, match="model.name"):
        _config(patches, tmp_path / "x", model={"name": "densenet12"})
    weights = tmp_path / "resnet18.pt"
    torch.save(build_model(ModelSpec(name="resnet18")).state_dict(), weights)
    with pytest.raises(ModelError, match="resnet18.pt"):
        train(_config(patches, tmp_path / "y", model={"name": "smallcnn", "pretrained": str(weights)}))
    assert not (tmp_path / "y" / "checkpoints").exists()  # failed before any training started


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "resnet18"])
def test_real_networks_learn(ray_cluster, patches, tmp_path, name):
    from medray.train.trainer import train

    summary = train(_config(patches, tmp_path / name, model={"name": name}, epochs=2,
                            optimizer={"lr": 0.001}, num_threads=2))
    assert summary["metrics"]["roc_auc"] > 0.9
