"""The CLI: overrides anywhere on the line, and errors blamed on what caused them."""

import pytest

from pipeline.cli import build_parser, split_overrides
from pipeline.config import load_config
from pipeline.errors import ConfigError


def test_overrides_may_follow_options():
    rest, overrides = split_overrides(["push", "-c", "c.yaml", "run_dir=X", "--dry-run", "hub.pretty_name=Y"])
    assert overrides == ["run_dir=X", "hub.pretty_name=Y"]
    args = build_parser().parse_args(rest)
    assert args.dry_run and args.config == "c.yaml"


def test_an_override_after_a_multi_value_option_is_not_a_file():
    rest, overrides = split_overrides(["demo", "--web", "a.jsonl", "b.parquet", "run_dir=runs/x"])
    assert build_parser().parse_args(rest).web == ["a.jsonl", "b.parquet"]
    assert overrides == ["run_dir=runs/x"]


def test_command_line_value_wins_over_the_files_exclusive_key(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("filter:\n  quality:\n    keep_top: 0.3\n")
    cfg = load_config(cfg_file, ["filter.quality.threshold=0.3"])
    assert cfg.filter.quality.threshold == 0.3 and cfg.filter.quality.keep_top is None


def test_both_exclusive_keys_in_one_file_say_what_to_add(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("filter:\n  quality:\n    keep_top: 0.3\n    threshold: 0.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg_file)
    assert "filter.quality.keep_top=null" in str(e.value) and "mapping" not in str(e.value)


def test_override_typo_is_blamed_on_the_override(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("seed: 1\n")
    with pytest.raises(ConfigError, match=r"^override 'generate.num_sampls=5': config key 'generate.num_sampls'"):
        load_config(cfg_file, ["generate.num_sampls=5"])


def test_yaml_errors_give_line_and_column(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("seed: 1\nfilter:\n  input: [a, b\n  limit: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+:\d+: invalid YAML"):
        load_config(cfg_file)
