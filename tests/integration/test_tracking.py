"""MLflow on a real sqlite store: params, lineage, a logged + registered model that loads back
through ``medray.models.bundle.load_model`` and predicts exactly like the in-memory model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medray.config import MlflowOptions
from medray.datasets.reader import DatasetInfo
from medray.errors import ModelError
from medray.models.bundle import load_model
from medray.models.preprocess import Preprocessing, to_tensor
from medray.models.registry import ModelSpec, build_model
from medray.models.weights import load_weights
from medray.train import tracking


@pytest.fixture
def store(mlflow_uri, tmp_path):
    import mlflow

    uri = tracking.configure(MlflowOptions(tracking_uri=mlflow_uri, experiment="medray-test",
                                           artifact_location=str(tmp_path / "artifacts")))
    yield uri
    if mlflow.active_run():
        mlflow.end_run()


def test_params_lineage_and_model_round_trip(store, tmp_path):
    """One store for the whole story (creating a sqlite store costs seconds)."""
    import mlflow

    assert mlflow.get_tracking_uri() == store
    exp = mlflow.get_experiment_by_name("medray-test")
    assert exp.artifact_location.endswith(str(tmp_path / "artifacts"))

    torch.manual_seed(0)
    spec = ModelSpec(name="smallcnn", in_channels=3, num_classes=2)
    model = build_model(spec).eval()
    prep = Preprocessing(size=32, info={"mpp": 0.5, "level": 0})
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    info = DatasetInfo(uri=str(tmp_path / "ds"), kind="patches", classes=["normal", "tumor"], num_rows=10,
                       class_counts={"normal": 7, "tumor": 3}, groups=["s1", "s2", "s3"],
                       fingerprint="abc123", shards=[], extra={})
    splits = {"train": ["s1", "s2"], "val": ["s3"]}
    counts = {"train": {"normal": 5, "tumor": 2}, "val": {"normal": 2, "tumor": 1}}
    with mlflow.start_run() as run:
        params = tracking.log_params_flat({"train": {"lr": 0.001, "epochs": 2}, "model": spec,
                                           "note": "x" * 7000})
        lineage = tracking.log_lineage(info, splits, counts)
        result = tracking.log_model(model, spec, ["normal", "tumor"], prep, 0.4, "tumor-clf", x)
    assert params["train.lr"] == "0.001" and params["model.name"] == "smallcnn"
    assert len(params["note"]) == 6000
    assert result == {**result, "model_uri": "models:/tumor-clf/1", "version": "1"}
    with open(mlflow.pyfunc.get_model_dependencies("models:/tumor-clf/1")) as f:
        requirements = f.read().split()
    assert requirements == tracking.model_requirements()  # given, not inferred (that costs ~11 s)
    pins = dict(r.split("==") for r in requirements)
    assert pins["torch"] == torch.__version__.split("+")[0] and pins["monai"] and pins["medray"]

    stored = mlflow.get_run(run.info.run_id)
    assert stored.data.params["model.num_classes"] == "2"
    assert stored.data.params["data.train.n_tumor"] == "2" and stored.data.params["data.val.groups"] == "1"
    assert stored.data.tags["medray.dataset.fingerprint"] == "abc123"
    logged = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/lineage.json")
    assert logged["splits"] == splits and logged["counts"]["val"] == {"normal": 2, "tumor": 1}
    if lineage["mlflow_input"]:
        assert {d.dataset.digest for d in stored.inputs.dataset_inputs} == {"abc123"}

    with torch.no_grad():
        expected = torch.softmax(model(to_tensor(x, prep)), 1).numpy()
    for uri, version in (("models:/tumor-clf/1", "1"), (f"runs:/{run.info.run_id}/model", run.info.run_id)):
        loaded = load_model(uri)
        assert loaded.classes == ["normal", "tumor"] and loaded.threshold == 0.4
        assert loaded.preprocessing == prep and loaded.spec == spec and loaded.version == version
        np.testing.assert_array_equal(loaded.predict_proba(x), expected)

    # the registered model is also a weight source for a new model
    fresh = build_model(spec)
    load_weights(fresh, "models:/tumor-clf/1")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))

    mlflow.MlflowClient().set_registered_model_alias("tumor-clf", "champion", "1")
    assert load_model("models:/tumor-clf@champion").version == "1"

    with pytest.raises(ModelError, match=r"cannot load MLflow model 'models:/no-such-model/1'.*not found"):
        load_model("models:/no-such-model/1")
    with pytest.raises(ModelError, match=r"cannot load MLflow model 'runs:/0123456789abcdef/model'"):
        load_model("runs:/0123456789abcdef/model")


def test_code_version_names_the_commit():
    import subprocess

    import medray

    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=medray.__path__[0]).stdout.strip()
    version = tracking.code_version()
    assert version.startswith(head or medray.__version__)
    assert version.removeprefix(head).rstrip() in ("", "-dirty") if head else version == medray.__version__


def test_bundle_on_s3(s3_bucket, s3_options):
    from medray.models.bundle import save_bundle

    torch.manual_seed(1)
    spec = ModelSpec(name="smallcnn", spatial_dims=3, in_channels=1, num_classes=3)
    model = build_model(spec).eval()
    prep = Preprocessing(spatial_dims=3, channels=1, size=16, mean=[0.0], std=[1.0], scale=1.0)
    uri = save_bundle(f"{s3_bucket}/models/ct", model, spec, ["a", "b", "c"], prep, storage=s3_options)
    loaded = load_model(uri, storage=s3_options)
    x = np.random.default_rng(0).normal(size=(2, 1, 16, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(loaded.predict_proba(x), expected, atol=1e-6)
    with pytest.raises(ModelError, match=r"models/nothing.*no bundle.json"):
        load_model(f"{s3_bucket}/models/nothing", storage=s3_options)
