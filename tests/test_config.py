"""The config contract: YAML + dotted overrides, typed, and errors that name the key."""

import pytest

from pipeline.config import load_config, public_dict
from pipeline.errors import ConfigError


def test_overrides_are_parsed_as_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: runs/x\ngenerate:\n  num_samples: 10\n")
    cfg = load_config(path, ["generate.num_samples=50", "filter.input=[a.parquet, b.jsonl]",
                             "generate.temperature=0.2", "filter.minhash.enabled=false"])
    assert cfg.generate.num_samples == 50
    assert cfg.filter.input == ["a.parquet", "b.jsonl"]
    assert cfg.generate.temperature == 0.2
    assert cfg.filter.minhash.enabled is False
    assert str(cfg.run_dir) == "runs/x"


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"'generate.num_sampls': unknown key \(did you mean 'generate.num_samples'"):
        load_config(None, ["generate.num_sampls=3"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="'generate.num_samples'"):
        load_config(None, ["generate.num_samples=abc"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["generate.num_samples"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_secrets_never_reach_the_public_dict():
    cfg = load_config(None, ["generate.api_key=sk-very-secret"])
    assert cfg.generate.api_key.get_secret_value() == "sk-very-secret"
    assert "sk-very-secret" not in str(public_dict(cfg))


def test_shipped_configs_validate():
    for name in ("configs/demo.yaml", "configs/default.yaml"):
        load_config(name)
