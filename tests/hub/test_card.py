"""`textbook card`: a dataset card whose metadata the Hub parses, whose configs `datasets` loads, whose
body is a datasheet computed from the run, and which says what is missing instead of crashing."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import pytest
from huggingface_hub import DatasetCard, ModelCard

from pipeline.cli import main
from pipeline.config import validate
from pipeline.hub.card import size_category, write_card
from pipeline.hub.push import push
from tests.hub.conftest import TEMPLATES, generated_frame


def test_every_config_of_the_published_folder_loads_with_datasets(run_dir):
    push(validate({"run_dir": str(run_dir)}), repo_id="acme/textbooks", dry_run=True)
    folder = run_dir / "push"
    card = DatasetCard.load(folder / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]
    assert meta["task_categories"] == ["text-generation"] and meta["size_categories"] == ["n<1K"]
    assert "synthetic" in meta["tags"]
    names = [c["config_name"] for c in meta["configs"]]
    assert names == ["generated", "filtered_web", "sft"]

    loaded = {name: datasets.load_dataset(str(folder), name, split="train") for name in names}
    generated = generated_frame()
    assert sorted(loaded["generated"]["id"]) == sorted(generated["id"])
    # filtered generated rows are in `generated`; `filtered_web` is web text only
    assert len(loaded["filtered_web"]) == 40 and set(loaded["filtered_web"]["source"]) == {"web.parquet"}
    # SFT: conversations that were not truncated, as user/assistant messages
    conversations = generated[(generated.template == "conversation") & (generated.finish_reason != "length")]
    assert sorted(loaded["sft"]["id"]) == sorted(conversations["id"])
    first = loaded["sft"][0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant", "user", "assistant"]
    assert first[0]["content"].startswith("Can you explain")


def test_the_card_body_is_a_datasheet_of_the_run(run_dir, capsys):
    assert main(["card", f"run_dir={run_dir}"]) == 0
    card_dir = run_dir / "card"
    text = (card_dir / "README.md").read_text()
    for template, sha in TEMPLATES.items():
        assert f"| `{template}` | `{sha}` | 20 | 33.3% |" in text
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in text
    assert "| truncation rate (`finish_reason=length`) | 10.0% |" in text
    assert "| cost (USD) | $0.0087 |" in text and "| planned rows not written (failed or over budget) | 2 |" in text
    # the collapsed story opening is exposed, overall (20 of 60) and for the story template (all)
    assert '"once upon a" | 33.3% |' in text and '| `story` | 20 |' in text
    assert "| gsm8k | 7 | 5 | 1,319 |" in text and "| mmlu | 3 | 3 | 14,042 |" in text
    assert "**Dedup rate:** 20 of 80 documents\n(25.0%)" in text
    assert "| heuristics | 120 | 100 | 20 | 16.7% |" in text and "| generated | 10 |" in text
    assert "| f1 | 0.790 | 0.930 |" in text and "| actual positive | 4 | 15 |" in text
    assert ".venv/bin/textbook generate -c reproduce/config.yaml" in text
    assert "textbook train --phase sft" in text
    for field in ("topic", "audience", "style"):
        assert f"](figures/seed_{field}.png)" in text and (card_dir / "figures" / f"seed_{field}.png").stat().st_size
    assert (card_dir / "figures" / "classifier_report.png").exists()
    assert "sk-test-secret" not in text and "sk-test-secret" not in (card_dir / "reproduce" / "config.yaml").read_text()
    assert validate(_yaml(card_dir / "reproduce" / "config.yaml")).generate.temperature == 0.8
    assert "dataset card:" in capsys.readouterr().out


def test_the_model_card_describes_the_final_checkpoint(run_dir, tiny_llama):
    from transformers import AutoModelForCausalLM

    write_card(validate({"run_dir": str(run_dir), "hub": {"repo_id": "acme/textbooks"}}))
    card = ModelCard.load(run_dir / "card" / "model" / "README.md")
    assert card.data.to_dict()["datasets"] == ["acme/textbooks"]
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama).parameters())
    assert f"| parameters | {params:,} |" in card.text
    assert "| `sft` | chat | 24,576 |" in card.text and "| `sft` | chat | 3.210 | 1.870 | 900 |" in card.text
    assert "| num_hidden_layers | 2 |" in card.text


def test_missing_artifacts_are_named_not_fatal(run_dir):
    for folder in ("classifier", "filtered", "checkpoints"):
        shutil.rmtree(run_dir / folder)
    (run_dir / "generated" / "manifest.json").unlink()
    assert write_card(validate({"run_dir": str(run_dir)})) == 0
    text = (run_dir / "card" / "README.md").read_text()
    assert "_Not available: classifier/report.json: missing (run `textbook train-classifier`)_" in text
    assert "_Not available: filtered/stats.json: missing (run `textbook filter`)_" in text
    assert "_no cost ledger in generated/manifest.json_" in text
    assert not (run_dir / "card" / "model" / "README.md").exists()
    meta = DatasetCard.load(run_dir / "card" / "README.md").data.to_dict()
    assert [c["config_name"] for c in meta["configs"]] == ["generated", "sft"]


def test_an_empty_run_gets_a_card_that_says_so(tmp_path):
    (tmp_path / "run").mkdir()
    assert write_card(validate({"run_dir": str(tmp_path / "run")})) == 0
    text = (tmp_path / "run" / "card" / "README.md").read_text()
    assert "_No data files" in text and "generated/part-*.parquet: no shards" in text


def test_a_missing_run_dir_is_a_one_line_error(tmp_path, capsys):
    assert main(["card", f"run_dir={tmp_path / 'absent'}"]) == 2
    assert capsys.readouterr().err.startswith(f"error: run_dir {tmp_path / 'absent'}: no such run directory")


def test_a_corrupt_manifest_is_reported_in_the_card(run_dir):
    (run_dir / "filtered" / "stats.json").write_text("{not json")
    write_card(validate({"run_dir": str(run_dir)}))
    assert "filtered/stats.json: unreadable" in (run_dir / "card" / "README.md").read_text()


@pytest.mark.parametrize(("rows", "bucket"), [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"),
                                               (250_000, "100K<n<1M"), (3 * 10**9, "1B<n<10B")])
def test_size_categories_follow_the_hub_buckets(rows, bucket):
    assert size_category(rows) == bucket


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())

