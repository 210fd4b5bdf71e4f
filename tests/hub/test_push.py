"""`textbook push`: the dry-run folder is exactly what the real upload sends to the Hub, and the token
travels only in the Authorization header. The Hub is a local HTTP stand-in speaking its protocol."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import validate
from pipeline.errors import HubError
from pipeline.hub.push import check_repo_id, push
from pipeline.io import write_parquet
from tests.hub.conftest import WEB_INPUT, record_outputs, relink
from tests.hub.hub_server import HubStandIn

TOKEN = "hf_FAKEtokenFORtests0123456789abcdef"


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Let huggingface_hub make requests (the suite runs offline), and isolate the token sources."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # Xet is switched off for the tests only. With hf_xet installed (it is a huggingface_hub
    # dependency), upload_folder sends every LFS file through Xet storage without asking the server:
    # that needs a Xet CAS service (token refresh endpoint, chunk and shard uploads) which this
    # stand-in does not implement. HF_HUB_DISABLE_XET makes huggingface_hub use the Git LFS batch +
    # PUT protocol the stand-in speaks; the commit API, auth and repo creation are the same either way.
    # pipeline.hub.push itself never sets it, so real pushes go through Xet.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-cache"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_push_uploads_exactly_the_dry_run_folder(run_dir, online, monkeypatch, capsys):
    with HubStandIn(TOKEN) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        args = [f"run_dir={run_dir}", "--repo-id", "acme/textbooks", "--private"]
        assert main(["push", *args, "--dry-run"]) == 0
        dry_run = _files(run_dir / "push")
        assert hub.requests == []  # a dry run never talks to the Hub
        assert main(["push", *args]) == 0

    repo = hub.repos["acme/textbooks"]
    assert repo.repo_type == "dataset" and repo.private
    assert repo.files == dry_run
    assert "README.md" in repo.files and any(p.startswith("data/generated/") for p in repo.files)
    # Parquet shards went through the LFS batch API and a PUT of their bytes, text inline in the commit
    lfs_paths = {op["value"]["path"] for op in repo.commits[-1]["operations"] if op["key"] == "lfsFile"}
    assert lfs_paths == {p for p in dry_run if p.endswith(".parquet")}
    assert len(hub.paths("PUT", "/lfs-storage/")) == len(lfs_paths)

    # the token is sent as a bearer token to the Hub API only, never in a URL, a body or to storage
    for req in hub.requests:
        assert TOKEN not in req.path and TOKEN.encode() not in req.body
        other = {k: v for k, v in req.headers.items() if k != "authorization"}
        assert TOKEN not in str(other)
        if req.method == "PUT":
            assert "authorization" not in req.headers
        else:
            assert req.headers["authorization"] == f"Bearer {TOKEN}"
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err
    assert "README.md" in out.out and "pushed" in out.out
    assert not any(TOKEN.encode() in b for b in dry_run.values())


@pytest.mark.slow
def test_a_second_push_replaces_stale_data_files(run_dir, online, monkeypatch):
    cfg = validate({"run_dir": str(run_dir), "hub": {"repo_id": "acme/textbooks"}})
    with HubStandIn(TOKEN) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        push(cfg)
        first = set(hub.repos["acme/textbooks"].files)
        (run_dir / "generated" / "part-00001.parquet").unlink()  # the run shrank (generate reran)
        record_outputs(run_dir, "generated")
        push(cfg)
        repo = hub.repos["acme/textbooks"]
    assert "data/generated/train-00001.parquet" in first
    assert "data/generated/train-00001.parquet" not in repo.files
    assert set(repo.files) == set(_files(run_dir / "push"))
    assert hub.paths("POST", "/api/repos/create")[1:]  # created once, then exist_ok on the 409


def test_model_push_uploads_the_checkpoint_with_its_model_card(run_dir, online, monkeypatch):
    from transformers import AutoModelForCausalLM

    cfg = validate({"run_dir": str(run_dir), "hub": {"repo_id": "acme/textbooks"}})
    with HubStandIn(TOKEN) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        push(cfg, model=True)
    repo = hub.repos["acme/textbooks-model"]
    assert repo.repo_type == "model"
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(repo.files)
    assert "pipeline_tag: text-generation" in repo.files["README.md"].decode()
    assert AutoModelForCausalLM.from_pretrained(run_dir / "push_model") is not None


@pytest.mark.slow
def test_errors_are_one_line_and_never_show_the_token(run_dir, online, monkeypatch, capsys):
    cfg = validate({"run_dir": str(run_dir)})
    with HubStandIn("hf_another_token_the_hub_expects") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(HubError, match="401.*token is invalid"):
            push(cfg, repo_id="acme/textbooks")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="no Hugging Face token: set HF_TOKEN"):
        push(cfg, repo_id="acme/textbooks")
    with pytest.raises(HubError, match="no repo id"):
        push(cfg)
    for bad in ("textbooks", "acme/text books", "acme/a/b", "-acme/x", "acme/x--y"):
        with pytest.raises(HubError, match="malformed"):
            check_repo_id(bad)
    assert main(["push", f"run_dir={run_dir / 'nope'}", "--repo-id", "acme/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run_dir") and err.count("\n") == 1 and TOKEN not in err


@pytest.mark.slow
def test_offline_mode_is_a_clear_error(run_dir, online, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        push(validate({"run_dir": str(run_dir)}), repo_id="acme/textbooks")


@pytest.mark.slow
def test_push_refuses_a_folder_that_contains_the_token(run_dir, online, monkeypatch):
    (run_dir / "generated" / "manifest.json").write_text(f'{{"leaked": "{TOKEN}"}}')
    relink(run_dir)  # the stages after it reran on it
    with HubStandIn(TOKEN) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(HubError, match="contains the Hugging Face token"):
            push(validate({"run_dir": str(run_dir)}), repo_id="acme/textbooks")
    assert hub.requests == []


@pytest.mark.slow
def test_a_dry_run_refuses_what_a_real_push_refuses(run_dir, online, capsys):
    (run_dir / "generated" / "manifest.json").write_text(f'{{"leaked": "{TOKEN}"}}')
    relink(run_dir)
    assert main(["push", f"run_dir={run_dir}", "--repo-id", "acme/textbooks", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: push/manifests/generate.json (copied from generated/manifest.json): contains the "
                   "Hugging Face token; refusing to upload (nothing was written or pushed)\n")
    assert not (run_dir / "push").exists()


def test_a_dry_run_refuses_a_configured_secret_in_any_file(run_dir, capsys):
    key = "sk-live-0123456789abcdef"
    (run_dir / "filtered" / "stats.json").write_text(f'{{"note": "{key}"}}')
    assert main(["push", f"run_dir={run_dir}", f"generate.api_key={key}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "contains config key 'generate.api_key'" in err and key not in err


@pytest.mark.slow
def test_push_refuses_a_card_built_from_other_manifests(run_dir, capsys):
    assert main(["card", f"run_dir={run_dir}"]) == 0
    manifest = run_dir / "filtered" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"documents_out": 50', '"documents_out": 49'))  # filter reran
    relink(run_dir)  # and so did training
    assert main(["push", f"run_dir={run_dir}", "--dry-run"]) == 2
    assert capsys.readouterr().err == ("error: card/ was built from other manifests (checkpoints/sft/manifest.json "
                                       "changed, filtered/manifest.json changed): rerun textbook card\n")
    assert main(["card", f"run_dir={run_dir}"]) == 0
    assert main(["push", f"run_dir={run_dir}", "--dry-run"]) == 0


@pytest.mark.slow
def test_the_model_card_links_the_dataset_this_run_was_pushed_to(run_dir, online, monkeypatch):
    from huggingface_hub import ModelCard

    cfg = validate({"run_dir": str(run_dir)})  # no hub.repo_id: the repo ids come from the command line
    with HubStandIn(TOKEN) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        push(cfg, repo_id="acme/textbooks")
        push(cfg, repo_id="acme/tiny-lm", model=True)
    card = ModelCard(hub.repos["acme/tiny-lm"].files["README.md"].decode())
    assert card.data.to_dict()["datasets"] == ["acme/textbooks"]
    assert "Training data: [acme/textbooks](https://huggingface.co/datasets/acme/textbooks)." in card.text


@pytest.mark.slow
def test_published_rows_show_public_names_not_local_paths(run_dir, capsys):
    """The generator was a local model folder and the web text a local file: the data files say
    their names, as the cards and manifests do, never where they sat on this machine."""
    generated = run_dir / "generated" / "part-00000.parquet"
    write_parquet(pd.read_parquet(generated).assign(model="/home/someone/models/SmolLM2-local"), generated)
    filtered = run_dir / "filtered" / "part-00000.parquet"
    web = pd.read_parquet(filtered)
    write_parquet(web.assign(source=[WEB_INPUT if s != "generated" else s for s in web["source"]]), filtered)
    record_outputs(run_dir, "generated")
    record_outputs(run_dir, "filtered")
    assert main(["card", f"run_dir={run_dir}"]) == 0
    assert main(["push", f"run_dir={run_dir}", "--dry-run"]) == 0
    data = run_dir / "push" / "data"
    models = pd.concat(pd.read_parquet(p) for p in (data / "generated").glob("*.parquet"))["model"]
    assert set(models) == {"SmolLM2-local", "HuggingFaceTB/SmolLM2-135M-Instruct"}
    sources = pd.concat(pd.read_parquet(p) for p in (data / "filtered_web").glob("*.parquet"))["source"]
    assert set(sources) == {"web.jsonl"}
    for path in (run_dir / "push").rglob("*"):
        assert not path.is_file() or b"/home/someone" not in path.read_bytes(), path
    assert pd.read_parquet(generated)["model"].iloc[0] == "/home/someone/models/SmolLM2-local"  # the run's own


@pytest.mark.slow
def test_the_published_sft_set_is_what_sft_trains_on(run_dir):
    """A conversation flagged repetitive or truncated neither trains nor is published; the rest do both."""
    import pandas as pd

    from pipeline.io import read_parquet, write_parquet
    from pipeline.rundir import RunDir, shard_path
    from pipeline.train.sft import sft_conversations

    shard = shard_path(RunDir(run_dir).generated, 0)
    rows = read_parquet(shard)
    looping = rows.index[rows["template"] == "conversation"][0]
    rows.at[looping, "flags"] = ["repetitive"]
    write_parquet(rows, shard)
    record_outputs(run_dir, "generated")
    cfg = validate({"run_dir": str(run_dir)})
    trained, _ = sft_conversations(cfg.train.sft, cfg.train.sources[cfg.train.sft.source], run_dir)
    assert rows.at[looping, "id"] not in trained

    push(cfg, repo_id="acme/textbooks", dry_run=True)
    published = pd.concat([read_parquet(p) for p in (run_dir / "push" / "data" / "sft").glob("*.parquet")])
    assert list(published["id"]) == list(trained)
    for row_id, messages in zip(published["id"], published["messages"], strict=True):
        assert [dict(m) for m in messages] == trained[row_id]
