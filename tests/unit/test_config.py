"""Config loading: YAML + overrides, and errors that name the field and the allowed values."""

from typing import Literal

import pytest
import yaml
from pydantic import Field

from medray.config import MedrayModel, StorageOptions, config_hash, load_config, parse_overrides
from medray.config.base import dump_config_yaml, write_resolved_config
from medray.errors import ConfigError


class Inner(MedrayModel):
    lr: float = Field(0.1, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"


class Job(MedrayModel):
    name: str = "job"
    epochs: int = Field(2, ge=1)
    train: Inner = Field(default_factory=Inner)
    tags: list[str] = Field(default_factory=list)
    storage: StorageOptions = Field(default_factory=StorageOptions)


def test_parse_overrides_nests_and_types_values():
    assert parse_overrides(["a.b=3", "a.c=x", "d=[1, 2]", "e=true", "f=0.5"]) == {
        "a": {"b": 3, "c": "x"}, "d": [1, 2], "e": True, "f": 0.5}


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "from-yaml", "epochs": 5, "train": {"lr": 0.01}}))
    cfg = load_config(Job, path, ["train.optimizer=sgd", "epochs=7"])
    assert (cfg.name, cfg.epochs, cfg.train.lr, cfg.train.optimizer) == ("from-yaml", 7, 0.01, "sgd")


def test_unknown_field_names_allowed_fields_and_closest(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(Job, None, ["train.lrr=0.3"])
    message = str(info.value)
    assert "train.lrr" in message and "'lr'" in message and "optimizer" in message


def test_unknown_top_level_field(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown field 'epoch'.*did you mean 'epochs'"):
        load_config(Job, None, ["epoch=3"])


def test_wrong_type_and_literal_name_the_field():
    with pytest.raises(ConfigError, match=r"epochs: .*integer.*'many'"):
        load_config(Job, None, ["epochs=many"])
    with pytest.raises(ConfigError, match=r"train.optimizer: .*'adam' or 'sgd'"):
        load_config(Job, None, ["train.optimizer=rmsprop"])
    with pytest.raises(ConfigError, match=r"epochs: .*greater than or equal to 1"):
        load_config(Job, None, ["epochs=0"])


def test_missing_or_bad_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Job, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Job, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Job, listy)


def test_hash_is_stable_and_sensitive():
    a, b = Job(), Job()
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(Job(epochs=3))


def test_resolved_config_is_written_and_reloads(tmp_path):
    cfg = load_config(Job, None, ["epochs=4", "tags=[a, b]"])
    uri = write_resolved_config(cfg, str(tmp_path / "out"))
    again = load_config(Job, uri)
    assert again == cfg


def test_secrets_are_masked_in_dumps():
    cfg = Job(storage=StorageOptions(access_key_id="AKIA-SECRET", secret_access_key="very-secret"))
    text = dump_config_yaml(cfg)
    assert "very-secret" not in text and "AKIA-SECRET" not in text
    assert cfg.storage.resolved()["secret_access_key"] == "very-secret"
