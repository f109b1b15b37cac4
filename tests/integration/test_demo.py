"""`make demo`'s first steps run through the same code path on the session cluster."""

import json

import pytest

from medray.config.base import load_config
from medray.demo import DemoConfig, run_demo
from medray.errors import ConfigError


@pytest.mark.slow
def test_demo_platform_slides_extract(ray_cluster, tmp_path):
    cfg = DemoConfig(workdir=str(tmp_path / "demo"), num_slides=2, slide_size=4096,
                     steps=["platform", "slides", "extract"])
    outputs = run_demo(cfg)
    assert outputs["platform"]["mlflow_run"]
    assert len(outputs["slides"]["slides"]) == 2
    assert outputs["extract"]["slides"]["ok"] == 2 and outputs["extract"]["patches"]["tumor"] > 0
    written = json.loads((tmp_path / "demo" / "demo_outputs.json").read_text())
    assert set(written) == {"platform", "slides", "extract"}
    assert (tmp_path / "demo" / "datasets" / "patches" / "contact_sheet.png").is_file()


def test_unknown_demo_step_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown demo steps \['trian'\]"):
        run_demo(DemoConfig(workdir=str(tmp_path), steps=["trian"]))


def test_demo_config_overrides():
    cfg = load_config(DemoConfig, None, ["epochs=1", "model=resnet18", "steps=[platform]"])
    assert (cfg.epochs, cfg.model, cfg.steps) == (1, "resnet18", ["platform"])
