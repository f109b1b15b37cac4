"""CT (2D slices, 3D volumes) and dermoscopy (7 classes): synth → ingest → shared trainer → MLflow metrics.

Floors are for tiny synthetic data and a few epochs on 2 CPU cores: 2D CT ROC AUC > 0.85,
3D CT ROC AUC > 0.75 (smallcnn-3D: DenseNet121-3D is too slow for a CPU test, it gets a
forward/backward check instead), dermoscopy macro ROC AUC > 0.8 with DenseNet121.
"""

from __future__ import annotations

import pytest

CT_MAP = {"CT-0": "normal", "CT-2": "abnormal", "CT-3": "abnormal"}


def _ingest(output, **fields) -> dict:
    from medray.config.base import validate_config
    from medray.datasets.ingest import run_ingest
    from medray.datasets.ingest_config import IngestConfig

    return run_ingest(validate_config(IngestConfig, {"output": str(output), **fields}), progress=False)


def _train(dataset, output, mlflow_uri, **fields) -> dict:
    from medray.train.config import TrainConfig
    from medray.train.trainer import train

    data = {"dataset": str(dataset), "output": str(output), "epochs": 3, "batch_size": 16, "seed": 0,
            "num_threads": 2, "augment": {"enabled": False}, "imbalance": "class_weights",
            "mlflow": {"tracking_uri": mlflow_uri, "experiment": "ct-skin-test"}, **fields}
    return train(TrainConfig.model_validate(data))


def _logged_metrics(mlflow_uri: str, run_id: str) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_uri).get_run(run_id).data.metrics


def _assert_per_class_metrics(metrics: dict[str, float], classes: list[str], auc_key: str) -> None:
    for prefix in ("val_", "final_"):
        assert f"{prefix}balanced_accuracy" in metrics
        assert f"{prefix}{auc_key}" in metrics
        for name in classes:
            assert f"{prefix}recall_{name}" in metrics, sorted(metrics)


@pytest.mark.slow
def test_ct2d_resnet_learns_severity(ray_cluster, tmp_path, mlflow_uri):
    from medray.synth import ct

    synth = ct.generate(ct.Config(output=str(tmp_path / "ct"), patients_per_class=12, slices_per_patient=4,
                                  image_size=32, formats=["png"], seed=11))
    _ingest(tmp_path / "ds", manifest=synth["manifests"]["png"], class_map=CT_MAP, classes=["normal", "abnormal"],
            loader={"kind": "ct2d", "image_size": 32}, rows_per_shard=16)
    # ~7 optimizer steps per epoch: a ResNet needs several epochs of them to pick up the lung density.
    summary = _train(tmp_path / "ds", tmp_path / "train", mlflow_uri, epochs=10, split={"val_fraction": 0.3},
                     optimizer={"lr": 0.003}, model={"name": "resnet18", "in_channels": 1},
                     preprocessing={"size": 32, "mean": [0.5], "std": [0.5]})
    assert summary["metrics"]["roc_auc"] > 0.85, summary["metrics"]
    _assert_per_class_metrics(_logged_metrics(mlflow_uri, summary["mlflow_run_id"]), ["normal", "abnormal"],
                              "roc_auc")


@pytest.mark.slow
def test_ct3d_volume_classifier_learns(ray_cluster, tmp_path, mlflow_uri):
    from medray.synth import ct

    synth = ct.generate(ct.Config(output=str(tmp_path / "ct"), studies_per_class=6, volume_shape=(32, 32, 16),
                                  formats=["nifti"], seed=11))
    report = _ingest(tmp_path / "ds", builder={"kind": "mosmed", "root": synth["output"] + "/studies"},
                     classes=["normal", "abnormal"], loader={"kind": "ct3d", "target_shape": [16, 32, 32]},
                     rows_per_shard=4)
    assert report["shape"] == [1, 16, 32, 32]
    summary = _train(tmp_path / "ds", tmp_path / "train", mlflow_uri, epochs=6, batch_size=4,
                     split={"val_fraction": 0.34}, optimizer={"lr": 0.003},
                     model={"name": "smallcnn", "spatial_dims": 3, "in_channels": 1},
                     preprocessing={"size": 32, "mean": [0.5], "std": [0.5]})
    assert summary["metrics"]["roc_auc"] > 0.75, summary["metrics"]
    _assert_per_class_metrics(_logged_metrics(mlflow_uri, summary["mlflow_run_id"]), ["normal", "abnormal"],
                              "roc_auc")


def test_densenet121_3d_forward_backward():
    """The ct3d.yaml network: MONAI DenseNet121, spatial_dims=3, one input channel, learns a step."""
    import torch

    from medray.models.registry import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec(name="densenet121", spatial_dims=3, in_channels=1, num_classes=2))
    x, y = torch.rand(2, 1, 32, 32, 32), torch.tensor([0, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    logits = model(x)
    assert logits.shape == (2, 2)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    first = model.features.conv0.weight
    assert first.shape[:2] == (64, 1) and first.grad is not None and float(first.grad.abs().sum()) > 0
    before = first.detach().clone()
    optimizer.step()
    assert not torch.equal(before, first.detach())  # the step reached the first 3D convolution


@pytest.mark.slow
def test_skin_densenet121_seven_classes(ray_cluster, tmp_path, mlflow_uri):
    from medray.synth import skin

    synth = skin.generate(skin.Config(output=str(tmp_path / "skin"), total_images=140, min_per_class=10,
                                      image_size=32, seed=11))
    _ingest(tmp_path / "ds", builder={"kind": "ham10000", "metadata_csv": synth["metadata"],
                                      "images_dir": synth["images_dir"]},
            classes=skin.CLASSES, loader={"kind": "skin", "image_size": 32}, rows_per_shard=32)
    summary = _train(tmp_path / "ds", tmp_path / "train", mlflow_uri, epochs=4, batch_size=16,
                     split={"val_fraction": 0.3}, optimizer={"lr": 0.001}, imbalance="class_weights",
                     model={"name": "densenet121", "in_channels": 3}, preprocessing={"size": 32})
    assert summary["metrics"]["roc_auc_macro"] > 0.8, summary["metrics"]
    _assert_per_class_metrics(_logged_metrics(mlflow_uri, summary["mlflow_run_id"]), skin.CLASSES,
                              "roc_auc_macro")
