"""Model registry, weight loading (by-name key checks), preprocessing numbers, local bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medray.errors import ModelError
from medray.models.bundle import load_model, save_bundle
from medray.models.preprocess import Preprocessing, to_tensor
from medray.models.registry import (ModelSpec, available_models, build_model, classifier_head_name,
                                    feature_extractor)
from medray.models.weights import load_weights

FAST = {"smallcnn", "resnet18", "efficientnet-b0"}
FEATURE_DIMS = {"smallcnn": 64, "resnet18": 512, "resnet50": 2048, "resnet152": 2048,
                "densenet121": 1024, "efficientnet-b0": 1280}


def _cases():
    for name in sorted(FEATURE_DIMS):
        for dims, channels in ((2, 3), (2, 1), (3, 1), (3, 3)):
            heavy = name not in FAST or (name != "smallcnn" and (dims, channels) in ((2, 1), (3, 3))) \
                or (name, dims) == ("efficientnet-b0", 3)
            marks = [pytest.mark.slow] if heavy else []
            yield pytest.param(name, dims, channels, marks=marks, id=f"{name}-{dims}d-{channels}ch")


def test_registry_lists_every_model():
    assert available_models() == sorted(FEATURE_DIMS)


@pytest.mark.parametrize("name,dims,channels", list(_cases()))
def test_every_model_gives_logits_and_features(name, dims, channels):
    num_classes = 2 + dims + channels  # a different class count per case
    spec = ModelSpec(name=name, spatial_dims=dims, in_channels=channels, num_classes=num_classes)
    model = build_model(spec).eval()
    x = torch.randn(2, channels, *([32] * dims))
    with torch.no_grad():
        logits = model(x)
        extractor, dim = feature_extractor(model, spec)
        features = extractor(x)
    assert logits.shape == (2, num_classes)
    assert dim == FEATURE_DIMS[name]
    assert features.shape == (2, dim)
    head = model.get_submodule(classifier_head_name(spec))
    with torch.no_grad():  # the extractor is exactly the network without its head
        torch.testing.assert_close(head(features), logits)


def test_unknown_model_names_the_closest():
    from medray.models.registry import check_model_name

    with pytest.raises(ModelError, match=r"unknown model 'resnet19'.*available models.*closest is 'resnet18'"):
        check_model_name("resnet19")
    with pytest.raises(Exception, match="densenet121"):  # the spec validates the name too
        ModelSpec(name="densenet")


def test_dropout_only_in_training():
    spec = ModelSpec(name="smallcnn", dropout=0.5)
    model = build_model(spec)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
    assert model.head.p == 0.5


@pytest.fixture
def small():
    torch.manual_seed(0)
    spec = ModelSpec(name="smallcnn", in_channels=3, num_classes=3)
    return spec, build_model(spec).eval()


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_state_dict_round_trip_and_pretrained(small, tmp_path):
    spec, model = small
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    fresh = build_model(spec)
    assert not _same(fresh, model)
    report = load_weights(fresh, str(path))
    assert _same(fresh, model) and report["missing"] == [] and report["unexpected"] == []
    built = build_model(spec.model_copy(update={"pretrained": str(path)}))
    assert _same(built, model)


def test_checkpoint_dict_with_ddp_prefix(small, tmp_path):
    spec, model = small
    ckpt = {"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(ckpt, tmp_path / "ckpt.pth")
    fresh = build_model(spec)
    load_weights(fresh, str(tmp_path / "ckpt.pth"))
    assert _same(fresh, model)


def test_mismatched_weights_name_the_keys(small, tmp_path):
    spec, model = small
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["features.0.weight"]
    torch.save(state, tmp_path / "bad.pt")
    other = build_model(spec.model_copy(update={"num_classes": 5}))
    with pytest.raises(ModelError, match=r"missing keys 1 \['features.0.weight'\].*unexpected keys 1 "
                                         r"\['extra.weight'\].*shape mismatches 2 \[head.weight: file "
                                         r"\(3, 64\) vs model \(5, 64\)"):
        load_weights(other, str(tmp_path / "bad.pt"))
    with pytest.raises(ModelError, match="strict_weights"):
        build_model(spec.model_copy(update={"num_classes": 5, "pretrained": str(tmp_path / "bad.pt")}))


def test_non_strict_loads_what_fits(small, tmp_path):
    spec, model = small
    torch.save(model.state_dict(), tmp_path / "w.pt")
    other = build_model(spec.model_copy(update={"num_classes": 5}))
    report = load_weights(other, str(tmp_path / "w.pt"), strict=False)
    assert sorted(report["mismatched"]) == ["head.bias", "head.weight"]
    assert torch.equal(other.features[0].weight, model.features[0].weight)
    assert other.head.weight.shape == (5, 64)
    # ignoring the head makes the load strict-clean (transfer learning to a new class count)
    again = build_model(spec.model_copy(update={"num_classes": 5}))
    report = load_weights(again, str(tmp_path / "w.pt"), ignore_prefixes=("head.",))
    assert report["ignored"] == ["head.weight", "head.bias"] and not report["mismatched"]


def test_bad_weight_sources(small, tmp_path):
    _, model = small
    with pytest.raises(ModelError, match="nowhere.pt.*not found"):
        load_weights(model, str(tmp_path / "nowhere.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read weights"):
        load_weights(model, str(tmp_path / "junk.pt"))
    torch.save({"epoch": 1, "lr": torch.tensor(0.1), "opt": {}}, tmp_path / "noweights.pt")
    with pytest.raises(ModelError, match="holds no state dict"):
        load_weights(model, str(tmp_path / "noweights.pt"))


def test_preprocessing_numbers_by_hand():
    prep = Preprocessing(size=2)
    x = np.zeros((1, 2, 2, 3), np.uint8)
    x[..., 0] = 255
    x[..., 1] = 51
    t = to_tensor(x, prep)
    assert t.shape == (1, 3, 2, 2) and t.dtype == torch.float32 and t.is_contiguous()
    # (255/255 - .5)/.5 = 1, (51/255 - .5)/.5 = -0.6, (0 - .5)/.5 = -1
    torch.testing.assert_close(t[0, :, 1, 1], torch.tensor([1.0, -0.6, -1.0]))
    grey = Preprocessing(channels=1, mean=[0.25], std=[0.5], size=(2, 3))
    torch.testing.assert_close(to_tensor(np.full((2, 2, 3), 255, np.uint8), grey),
                               torch.full((2, 1, 2, 3), 1.5))
    vol = Preprocessing(spatial_dims=3, channels=1, mean=[-1000.0], std=[500.0], scale=1.0, size=4)
    torch.testing.assert_close(to_tensor(np.zeros((1, 1, 4, 4, 4), np.int16), vol), torch.full((1, 1, 4, 4, 4), 2.0))
    assert vol.shape == (4, 4, 4)
    assert Preprocessing(channels=1).mean == [0.5] and Preprocessing(channels=4).std == [0.5] * 4


def test_preprocessing_rejects_bad_layouts():
    from medray.errors import DataError

    with pytest.raises(DataError, match=r"\(N, H, W, 3\).*\(2, 3, 8, 8\)"):
        to_tensor(np.zeros((2, 3, 8, 8), np.uint8), Preprocessing())
    with pytest.raises(ValueError, match="mean has 2 values but channels=3"):
        Preprocessing(mean=[0.1, 0.2])


def test_bundle_round_trip(small, tmp_path):
    spec, model = small
    prep = Preprocessing(size=32, info={"mpp": 0.5})
    out = save_bundle(str(tmp_path / "b"), model, spec, ["a", "b", "c"], prep, threshold=0.3, extra={"k": 1})
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["classes"] == ["a", "b", "c"] and meta["preprocessing"]["info"] == {"mpp": 0.5}
    loaded = load_model(out)
    assert loaded.threshold == 0.3 and loaded.extra == {"k": 1} and loaded.spec == spec
    assert loaded.version == meta["weights_sha256"][:12]
    x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = torch.softmax(model(to_tensor(x, prep)), 1).numpy()
    np.testing.assert_allclose(loaded.predict_proba(x, batch_size=2), expected, atol=1e-6)
    # weights are also loadable as pretrained from the bundle folder
    assert _same(build_model(spec.model_copy(update={"pretrained": out})), model)


def test_bundle_missing_metadata(tmp_path):
    with pytest.raises(ModelError, match=r"cannot load model .*empty.*no bundle.json"):
        load_model(str(tmp_path / "empty"))
