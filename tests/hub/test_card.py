"""`textbook card`: a dataset card whose metadata the Hub parses, whose configs `datasets` loads, whose
body is a datasheet computed from the run, and which says what is missing instead of crashing."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import datasets
import pandas as pd
import pytest
from huggingface_hub import DatasetCard, ModelCard

from pipeline.cli import main
from pipeline.config import validate
from pipeline.hub.card import size_category, write_card
from pipeline.hub.push import push
from pipeline.io import read_json, write_json, write_parquet
from pipeline.lineage import content_digest
from tests.hub.conftest import TEMPLATES, generated_frame, record_outputs, relink


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


@pytest.mark.slow
def test_the_card_body_is_a_datasheet_of_the_run(run_dir, capsys):
    assert main(["card", f"run_dir={run_dir}", "hub.repo_id=acme/textbooks"]) == 0
    card_dir = run_dir / "card"
    text = (card_dir / "README.md").read_text()
    for template, sha in TEMPLATES.items():
        assert f"| `{template}` | `{sha}` | 20 | 33.3% |" in text
        assert f"| A {template} for the card's tests. |" in text  # what it asks for, from the manifest
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in text and "| top_p | 0.95 |" in text
    assert "| truncation rate (`finish_reason=length`) | 10.0% |" in text
    # the ledger: (2,574 x $0.15 + 13,770 x $0.60) / 1M; 62 requests planned, 60 rows written
    assert "| tokens billed (prompt / completion) | 2,574 / 13,770 |" in text and "| cost (USD) | $0.0086 |" in text
    assert "| planned rows not written (failed or over budget) | 2 |" in text
    # seed shares are over the rows whose template uses the variable (stories have no topic or style)
    assert "### topics: 5 distinct over 40 rows, the most common covers 20.0%" in text
    assert "### styles: 2 distinct over 20 rows, the most common covers 50.0%" in text
    assert "_25 less common values not shown._" in text  # 40 subtopics, the top 15 listed
    # the collapsed story opening: the generator's stored report (all rows), then per template
    stored = read_json(run_dir / "generated" / "manifest.json")["diversity"]
    assert f'| all | 60 | {stored["distinct_1"]:.3f} | {stored["distinct_2"]:.3f} |' in text
    assert f'"once upon a" | 33.3% | {100 * stored["near_duplicate_rate"]:.1f}% |' in text
    assert '| `story` | 20 | ' in text and '"once upon a" | 100.0% |' in text
    assert "**Diversity gate:** opening 'once upon a' starts 33% of rows" in text
    assert "| f1 | 0.789 | 1.000 |" in text and "| actual positive | 4 | 15 |" in text
    assert "Trained on 160 documents (80 positive),\nvalidated on 40 (19 positive)." in text
    assert "- warning: only 19 validation documents" in text
    assert "| heuristics | 120 | 100 | 20 | 16.7% |" in text and "| generated | 10 |" in text
    assert "**Dedup rate:** 20 of 70 documents\n(28.6%)" in text  # dedup runs after decontamination
    assert "**Quality threshold:** documents kept when `edu_score >= 0.4821` (the top 50.0% of web documents" in text
    assert "| gsm8k | 7 | 5 | 5 | 1,319 | 1,300 |" in text and "| mmlu | 3 | 3 | 3 | 14,042 | 14,000 |" in text
    assert 'hf download acme/textbooks --repo-type dataset --include "reproduce/*" --local-dir .' in text
    assert ".venv/bin/textbook generate -c reproduce/config.yaml" in text
    assert "textbook train --phase sft" in text
    assert "_Not trained in this run: `phase1`, `phase2` (`textbook train --phase 1`)._" in text
    for field in ("subject", "topic", "audience", "style"):
        assert f"](figures/seed_{field}.png)" in text and (card_dir / "figures" / f"seed_{field}.png").stat().st_size
    for figure in ("classifier_report.png", "filter_report.png"):
        assert f"](figures/{figure})" in text and (card_dir / "figures" / figure).exists()
    _assert_tables_well_formed(text)
    assert "sk-test-secret" not in text and "sk-test-secret" not in (card_dir / "reproduce" / "config.yaml").read_text()
    assert validate(_yaml(card_dir / "reproduce" / "config.yaml")).generate.temperature == 0.8
    assert "dataset card:" in capsys.readouterr().out


@pytest.mark.slow
def test_the_model_card_describes_the_final_checkpoint(run_dir, tiny_llama):
    from transformers import AutoModelForCausalLM

    write_card(validate({"run_dir": str(run_dir), "hub": {"repo_id": "acme/textbooks"}}))
    card = ModelCard.load(run_dir / "card" / "model" / "README.md")
    assert card.data.to_dict()["datasets"] == ["acme/textbooks"]
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama).parameters())
    assert f"| parameters | {params:,} |" in card.text
    assert "| `sft` | chat | 24,576 |" in card.text and "| `sft` | chat | 3.210 | 1.870 | 900 |" in card.text
    assert "| num_hidden_layers | 2 |" in card.text
    assert "](loss.png)" in card.text and (run_dir / "card" / "model" / "loss.png").exists()
    assert "hf download acme/textbooks-model --repo-type model" in card.text
    _assert_tables_well_formed(card.text)


@pytest.mark.slow
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


def test_a_report_from_another_version_is_named_not_fatal(run_dir):
    report = read_json(run_dir / "classifier" / "report.json")
    del report["validation"]
    write_json(report, run_dir / "classifier" / "report.json")
    write_parquet(generated_frame(4).drop(columns=["template_sha"]), run_dir / "generated" / "part-00002.parquet")
    record_outputs(run_dir, "generated")  # as the other version of generate recorded it
    assert write_card(validate({"run_dir": str(run_dir)})) == 0
    text = (run_dir / "card" / "README.md").read_text()
    assert ("_Not available: classifier/report.json: unexpected layout (KeyError: 'validation'); "
            "its section is left out_") in text
    assert "generated/part-00002.parquet: lacks column(s) template_sha; skipped" in text


@pytest.mark.parametrize(("rows", "bucket"), [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"),
                                               (250_000, "100K<n<1M"), (3 * 10**9, "1B<n<10B")])
def test_size_categories_follow_the_hub_buckets(rows, bucket):
    assert size_category(rows) == bucket


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())



def _assert_tables_well_formed(text: str) -> None:
    """Every Markdown table has a blank line before it, a separator row, and as many cells per row as its header."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("|") and not lines[i - 1].startswith("|"):
            assert lines[i - 1] == "", f"no blank line before the table at line {i + 1}: {lines[i - 1]!r}"
            assert set(lines[i + 1]) <= set("|-: "), f"no separator under the header at line {i + 1}"
            width = _cells(line)
            for row in lines[i + 1:]:
                if not row.startswith("|"):
                    assert row == "", f"text right after the table at line {i + 1}: {row!r}"
                    break
                assert _cells(row) == width, f"row {row!r} has {_cells(row)} cells, header {width}"


def _cells(row: str) -> int:
    return len(row.replace("\\|", "").strip().strip("|").split("|"))


# --- lineage: the card is built from manifests that match the shards, and prints the chain ----------

def _digest(path: Path) -> str:
    return content_digest(path)[:8]


@pytest.mark.slow
def test_the_cards_print_the_lineage_chain_from_checkpoint_to_shards(run_dir):
    generated, filtered = run_dir / "generated" / "manifest.json", run_dir / "filtered" / "manifest.json"
    write_card(validate({"run_dir": str(run_dir)}))
    text = (run_dir / "card" / "README.md").read_text()
    assert (f"| `filtered/manifest.json` | `{_digest(filtered)}` | generate: `generated/manifest.json` "
            f"`{_digest(generated)}` | web.jsonl `d1d1d1d1` | 2 files, verified against disk |") in text
    assert f"| `classifier/report.json` | `{_digest(run_dir / 'classifier' / 'report.json')}` | not recorded |" in text
    model = (run_dir / "card" / "model" / "README.md").read_text()
    sft = run_dir / "checkpoints" / "sft" / "manifest.json"
    assert (f"| `checkpoints/sft/manifest.json` | `{_digest(sft)}` | chat: `generated/manifest.json` "
            f"`{_digest(generated)}`, web: `filtered/manifest.json` `{_digest(filtered)}` |") in model
    assert f"| `filtered/manifest.json` | `{_digest(filtered)}` |" in model  # the checkpoint's ancestors
    assert "`classifier/report.json`" not in model  # not one of them
    _assert_tables_well_formed(text)
    _assert_tables_well_formed(model)



@pytest.mark.slow
def test_the_card_and_push_refuse_a_checkpoint_trained_on_other_data(run_dir, capsys):
    """The filter reran on new input after training: the run would ship filtered data beside a model
    that never saw it."""
    assert main(["card", f"run_dir={run_dir}"]) == 0
    filtered = run_dir / "filtered" / "manifest.json"
    write_json({**read_json(filtered), "documents_out": 49}, filtered)  # a new filter run
    message = ("checkpoints/sft was built from filtered/manifest.json, which changed since: it does not match the "
               "data this run holds now; rerun textbook train --phase sft (--restart to discard the old one), then "
               "textbook card\n")
    card_before = (run_dir / "card" / "README.md").read_bytes()
    assert main(["card", f"run_dir={run_dir}"]) == 2
    assert capsys.readouterr().err == "error: " + message
    assert (run_dir / "card" / "README.md").read_bytes() == card_before
    assert main(["push", f"run_dir={run_dir}", "--dry-run"]) == 2
    assert capsys.readouterr().err == "error: " + message
    assert not (run_dir / "push").exists()

    generated = run_dir / "generated" / "manifest.json"
    relink(run_dir)  # trained again on the new data...
    write_json({**read_json(generated), "stop_reason": "rerun"}, generated)  # ...then generate reran
    assert main(["card", f"run_dir={run_dir}"]) == 2
    assert capsys.readouterr().err.startswith("error: filtered was built from generated/manifest.json, which "
                                              "changed since")


def test_manifests_without_lineage_still_get_a_card_that_says_not_recorded(run_dir):
    for path in run_dir.rglob("manifest.json"):
        manifest = read_json(path)
        write_json({k: v for k, v in manifest.items() if k not in ("lineage", "outputs")}, path)
    assert write_card(validate({"run_dir": str(run_dir)})) == 0
    text = (run_dir / "card" / "README.md").read_text()
    assert "| `generated/manifest.json` | `" in text
    assert "| not recorded | not recorded | not recorded |" in text
    assert "verified against disk" not in text


@pytest.mark.parametrize(("change", "message"), [
    (lambda run: write_parquet(generated_frame(3), run / "generated" / "part-00001.parquet"),
     "generated/part-00001.parquet: changed since generated/manifest.json was written (its content digest "
     "differs); rerun textbook generate"),
    (lambda run: shutil.copy(run / "filtered" / "part-00000.parquet", run / "filtered" / "part-00007.parquet"),
     "filtered/part-00007.parquet: not listed in filtered/manifest.json (left by another run?); rerun textbook filter"),
    (lambda run: (run / "checkpoints" / "sft" / "model.safetensors").unlink(),
     "checkpoints/sft/model.safetensors: listed in checkpoints/sft/manifest.json but missing; "
     "rerun textbook train --phase sft"),
], ids=["changed-shard", "unlisted-shard", "missing-checkpoint"])
def test_a_card_is_never_built_from_manifests_that_no_longer_match_the_files(run_dir, capsys, change, message):
    change(run_dir)
    assert main(["card", f"run_dir={run_dir}"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (run_dir / "card").exists()


# --- a public card: no machine-local paths, provenance as it happened --------------------------------

@pytest.mark.slow
def test_the_public_card_shows_no_machine_local_path(run_dir, tmp_path):
    local_model = str(tmp_path / "models" / "SmolLM2-135M-Instruct")
    for shard in sorted((run_dir / "generated").glob("part-*.parquet")):
        write_parquet(pd.read_parquet(shard).assign(model=local_model), shard)
    record_outputs(run_dir, "generated")
    stats = read_json(run_dir / "filtered" / "stats.json")
    broken = "/home/someone/corpora/broken.parquet"
    stats["bad_files"] = [{"path": broken, "error": f"{broken}: Corrupt snappy compressed data."}]
    write_json(stats, run_dir / "filtered" / "stats.json")

    push(validate({"run_dir": str(run_dir)}), repo_id="acme/textbooks", dry_run=True)
    assert write_card(validate({"run_dir": str(run_dir)})) == 0
    text = (run_dir / "card" / "README.md").read_text()
    assert "| generator model | SmolLM2-135M-Instruct |" in text
    assert "| web.jsonl | 40 |" in text  # kept documents by source: the input's file name
    assert "- broken.parquet: Corrupt snappy compressed data." in text
    # the DCLM-style classifier says what classifier.positives / negatives held, not their key names
    assert ("trained DCLM-style: positives from `generated/part-*.parquet`, negatives from `web.jsonl`" in text)
    assert "classifier.positives" not in text
    reproduce = _yaml(run_dir / "card" / "reproduce" / "config.yaml")
    assert reproduce["run_dir"] == "runs/run"
    assert reproduce["classifier"]["positives"] == ["runs/run/generated/part-*.parquet"]
    for folder in (run_dir / "card", run_dir / "push"):
        for path in folder.rglob("*"):
            if path.suffix in (".md", ".yaml", ".json"):
                body = path.read_text()
                assert str(tmp_path) not in body and "/home/someone" not in body, path


@pytest.mark.parametrize(("classifier", "said"), [
    ({"input": ["/home/someone/labels/my_labels.parquet"], "positives": [], "negatives": []},
     "trained on labelled documents from `my_labels.parquet` (positive when score >= 3.0)"),
    ({"input": [], "positives": [], "negatives": []},
     "trained on LLM annotations (`annotations/`, positive when score >= 3.0)"),
])
@pytest.mark.slow
def test_the_card_says_what_the_classifier_was_trained_on(run_dir, classifier, said):
    path = run_dir / "classifier" / "report.json"
    report = read_json(path)
    report["config"]["classifier"].update(classifier)
    write_json({**report, "mode": "labelled", "label_rule": "positive when score >= 3.0"}, path)
    write_card(validate({"run_dir": str(run_dir)}))
    assert said in (run_dir / "card" / "README.md").read_text()


@pytest.mark.slow
def test_card_and_push_folders_follow_the_umask(run_dir):
    shard = run_dir / "generated" / "part-00000.parquet"
    shard.chmod(0o600)  # as an older version wrote every shard
    old = os.umask(0o022)
    try:
        write_card(validate({"run_dir": str(run_dir)}))
        push(validate({"run_dir": str(run_dir)}), repo_id="acme/textbooks", dry_run=True)
        push(validate({"run_dir": str(run_dir)}), repo_id="acme/textbooks", dry_run=True, model=True)
    finally:
        os.umask(old)
    for folder in (run_dir / "card", run_dir / "push", run_dir / "push_model"):
        for path in [folder, *folder.rglob("*")]:
            assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
    assert stat.S_IMODE(shard.stat().st_mode) == 0o600  # the run's own shard is left as it was


@pytest.mark.slow
def test_the_cards_show_the_downstream_scores_and_the_data_ab_with_their_bundle(run_dir, tmp_path):
    from pipeline.eval.run import score_checkpoint
    from pipeline.hub.provenance import check_card_fresh
    from pipeline.lineage import LineageError
    from pipeline.train.compare import compare_table
    from tests.eval.test_eval import write_mc

    tasks = [{"name": "facts", "path": str(write_mc(tmp_path / "facts.jsonl", 24)), "format": "mc_jsonl"}]
    cfg = validate({"run_dir": str(run_dir), "eval": {"tasks": tasks, "bpb_docs": 0}})
    result = score_checkpoint(str(run_dir / "checkpoints" / "sft"), cfg.eval, cfg.run_dir, cfg.train.sources,
                              cfg.train.val_fraction)
    write_json(result, run_dir / "eval" / "sft.json")
    runs = {arm: [{"seed": k, "summary": {"final_val": {"web": {"bpb": 1.0 + 0.01 * k}}, "tokens": 640},
                   "eval": {**result, "score": result["score"] + shift + 0.02 * k}} for k in (0, 1)]
            for arm, shift in (("with_synthetic", 0.0), ("web_only", -0.2))}
    write_json(compare_table(runs, {"with_synthetic": {"web_top_edu": 0.5, "synthetic": 0.5},
                                    "web_only": {"web_top_edu": 1.0}}), run_dir / "compare" / "compare.json")
    write_card(cfg)

    model = (run_dir / "card" / "model" / "README.md").read_text()
    assert f"task bundle: `{result['bundle_digest']}`" in model
    assert f"| facts | 24 | {result['tasks']['facts']['accuracy']:.3f} |" in model
    assert f"**{result['score']:.3f}**" in model
    text = (run_dir / "card" / "README.md").read_text()
    assert "## What the data is worth" in text and f"`{result['bundle_digest']}`" in text
    assert "| `web_only` | web_top_edu 1 |" in text and "(noise 0.020: worse)" in text
    _assert_tables_well_formed(text)
    _assert_tables_well_formed(model)

    write_json({**result, "score": 0.5}, run_dir / "eval" / "sft.json")  # a new eval after the card
    with pytest.raises(LineageError, match=r"eval/sft\.json changed"):
        check_card_fresh(run_dir)


@pytest.mark.slow
def test_a_small_quality_threshold_is_shown_as_it_cuts(run_dir):
    stats = read_json(run_dir / "filtered" / "stats.json")
    write_json({**stats, "quality": {"threshold": 3.2e-05, "keep_top": 0.9}}, run_dir / "filtered" / "stats.json")
    write_card(validate({"run_dir": str(run_dir)}))
    assert "documents kept when `edu_score >= 3.2e-05`" in (run_dir / "card" / "README.md").read_text()


def _perturb(checkpoint: Path, shift: float) -> None:
    """Other weights in the same folder: another model, or this one retrained."""
    from safetensors.torch import load_file, save_file

    weights = load_file(checkpoint / "model.safetensors")
    save_file({k: v + shift for k, v in weights.items()}, checkpoint / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.slow
def test_eval_results_are_tied_to_the_checkpoint_they_scored(run_dir, tmp_path, capsys):
    """Evaluating another model also named `sft` keeps the run's own result, and each card shows only
    the scores of the checkpoint it describes."""
    import json

    from pipeline.lineage import checkpoint_digest, file_digests
    from tests.eval.test_eval import write_mc

    tasks = json.dumps([{"name": "facts", "path": str(write_mc(tmp_path / "facts.jsonl", 24)), "format": "mc_jsonl"}])
    common = [f"run_dir={run_dir}", f"eval.tasks={tasks}", "eval.bpb_docs=0"]
    sft = run_dir / "checkpoints" / "sft"
    ours = checkpoint_digest(sft)
    assert main(["eval", "--checkpoint", "sft", *common]) == 0
    other = tmp_path / "elsewhere" / "sft"
    shutil.copytree(sft, other)
    _perturb(other, 0.5)
    theirs = checkpoint_digest(other)
    assert main(["eval", "--checkpoint", str(other), *common]) == 0
    assert sorted(p.name for p in (run_dir / "eval").glob("*.json")) == sorted([f"sft-{ours}.json", f"sft-{theirs}.json"])

    capsys.readouterr()
    assert main(["card", f"run_dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    model = (run_dir / "card" / "model" / "README.md").read_text()
    assert f"digest\n`{ours}`" in model and theirs not in model
    text = (run_dir / "card" / "README.md").read_text()
    assert f"| `sft` (`{ours[:8]}`) |" in text and f"(`{theirs[:8]}`)" not in text
    assert "scored a checkpoint outside this run (sft); not shown" in text  # the card says what it left out
    assert f"eval/sft-{theirs}.json: scored a checkpoint outside this run (sft); not shown" in out

    _perturb(sft, 0.25)  # sft retrained: the result on disk scored the model it replaced
    manifest = read_json(sft / "manifest.json")
    write_json({**manifest, "outputs": file_digests([sft / "model.safetensors"], run_dir)}, sft / "manifest.json")
    assert main(["card", f"run_dir={run_dir}"]) == 0
    model = (run_dir / "card" / "model" / "README.md").read_text()
    assert "_Not evaluated: `textbook eval --checkpoint sft`" in model and ours not in model
    assert (f"eval/sft-{ours}.json: scored an earlier sft checkpoint than the run holds now; rerun textbook eval "
            "--checkpoint sft") in capsys.readouterr().out


def test_the_card_shows_tokens_per_rephrase_route(run_dir):
    shard = run_dir / "generated" / "part-00000.parquet"
    df = pd.read_parquet(shard)
    df["route"] = [("recycle" if i % 2 else "high") if i < 10 else None for i in range(len(df))]
    write_parquet(df, shard)
    record_outputs(run_dir, "generated")
    write_card(validate({"run_dir": str(run_dir)}))
    text = (run_dir / "card" / "README.md").read_text()
    assert "### Rephrase routes" in text
    routed = df[df["route"].notna()]
    for route, group in routed.groupby("route"):
        assert (f"| `{route}` | {len(group)} |" in text
                and f"| {int(group['prompt_tokens'].sum()):,} | {int(group['completion_tokens'].sum()):,} |" in text)
    _assert_tables_well_formed(text)
