"""`textbook push`: assemble the exact upload folder, then create the Hub repo and upload it.

Flow: validate the repo id → assemble ``RUN_DIR/push/`` (dataset) or ``RUN_DIR/push_model/``
(``--model``) in a temporary folder renamed into place → list it → stop here on ``--dry-run`` →
resolve the token (``HF_TOKEN`` or the login cache, huggingface_hub's own order) → refuse if the
token occurs in any file → ``create_repo(exist_ok=True)`` → ``upload_folder`` (or
``upload_large_folder`` above ``hub.large_folder_gb``). The token is only ever handed to ``HfApi``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from pipeline.config import Config
from pipeline.errors import HubError
from pipeline.hub.artifacts import CHECKPOINT_PHASES, load_artifacts
from pipeline.hub.card import build_dataset_card, build_model_card, model_repo_id, require_run_dir, sft_parser
from pipeline.hub.checkpoints import final_checkpoint
from pipeline.hub.layout import data_configs, write_data

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")

# run-dir file -> path in the dataset repo: the provenance a reader of the card can check
PROVENANCE = {
    "generated/manifest.json": "manifests/generate.json",
    "annotations/manifest.json": "manifests/annotate.json",
    "filtered/manifest.json": "manifests/filter.json",
    "filtered/stats.json": "manifests/filter_stats.json",
    "classifier/report.json": "classifier/report.json",
    "classifier/report.png": "classifier/report.png",
    **{f"checkpoints/{p}/train_summary.json": f"manifests/train_{p}.json" for p in CHECKPOINT_PHASES},
}
# files of a save_pretrained checkpoint folder that belong on the Hub (not state/, tensorboard/)
_MODEL_SKIP = {"README.md"}


def push(cfg: Config, repo_id: str | None = None, private: bool = False, dry_run: bool = False,
         model: bool = False, restart: bool = False) -> int:
    """Assemble the upload folder and push it (``model=True``: the final checkpoint with its model card)."""
    run_dir = require_run_dir(cfg)
    repo_id = repo_id or (model_repo_id(cfg) if model else cfg.hub.repo_id)
    if repo_id is None and not dry_run:
        raise HubError("no repo id: pass --repo-id ORG/NAME or set hub.repo_id")
    if repo_id is not None:
        check_repo_id(repo_id)
    if repo_id and not model:
        cfg = cfg.model_copy(update={"hub": cfg.hub.model_copy(update={"repo_id": repo_id})})
    dest = run_dir / ("push_model" if model else "push")
    folder = assemble_model(cfg, dest) if model else assemble_dataset(cfg, dest)
    total = print_listing(folder)
    if dry_run:
        print(f"dry run: nothing uploaded; {folder} is exactly what would be pushed"
              + (f" to {repo_id}" if repo_id else ""))
        return 0
    assert repo_id is not None
    url = upload(folder, repo_id, repo_type="model" if model else "dataset",
                 private=private or cfg.hub.private, endpoint=cfg.hub.endpoint,
                 large=total > cfg.hub.large_folder_gb * 1e9)
    print(f"pushed {folder} to {url}")
    return 0


def check_repo_id(repo_id: str) -> str:
    """``ORG/NAME`` with the Hub's characters; anything else is a one-line HubError."""
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id or repo_id.endswith((".", "-")):
        raise HubError(f"repo id {repo_id!r} is malformed: expected ORG/NAME (letters, digits, '-', '_', '.')")
    return repo_id


# --- assembling ----------------------------------------------------------------------------------

def assemble_dataset(cfg: Config, dest: Path) -> Path:
    """Write the dataset upload folder to ``dest``: README.md, figures/, reproduce/, data/, manifests/."""
    run_dir = Path(cfg.run_dir)
    art = load_artifacts(run_dir, cfg.hub.max_card_rows, cfg.seed)
    configs = data_configs(run_dir, sft_parser(cfg))
    if not configs:
        raise HubError(f"{run_dir}: no data to publish (no generated or filtered shards); run the stages first")
    with _staging(dest) as tmp:
        write_data(configs, tmp)
        for source, target in PROVENANCE.items():
            if (run_dir / source).exists():
                (tmp / target).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run_dir / source, tmp / target)
        build_dataset_card(cfg, art, configs, tmp)
    return dest


def assemble_model(cfg: Config, dest: Path) -> Path:
    """Write the model upload folder to ``dest``: the final checkpoint's files plus its model card."""
    art = load_artifacts(Path(cfg.run_dir), cfg.hub.max_card_rows, cfg.seed)
    phase = final_checkpoint(art, cfg.hub.model_checkpoint)
    if phase is None:
        raise HubError(f"{Path(cfg.run_dir) / 'checkpoints'}: no trained checkpoint to push "
                       "(run `textbook train --phase 1` first)")
    source = art.checkpoints[phase]["path"]
    with _staging(dest) as tmp:
        for path in sorted(source.iterdir()):
            if path.is_file() and path.name not in _MODEL_SKIP and not path.name.startswith("."):
                shutil.copy2(path, tmp / path.name)
        build_model_card(cfg, art, tmp)
    return dest


class _staging:
    """A temporary sibling of ``dest`` that replaces it on success, so ``dest`` is never half-written."""

    def __init__(self, dest: Path):
        self.dest = Path(dest)

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.", dir=self.dest.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self.dest.with_name(f".{self.dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.dest.exists():
            self.dest.rename(old)
        self.tmp.rename(self.dest)
        shutil.rmtree(old, ignore_errors=True)


def print_listing(folder: Path) -> int:
    """Print every file of ``folder`` with its size; return the total bytes."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    width = max((len(str(p.relative_to(folder))) for p in files), default=4)
    total = 0
    print(f"{'path':<{width}}  {'bytes':>12}")
    for path in files:
        size = path.stat().st_size
        total += size
        print(f"{str(path.relative_to(folder)):<{width}}  {size:>12,}")
    print(f"{f'{len(files)} files':<{width}}  {total:>12,}")
    return total


# --- uploading -----------------------------------------------------------------------------------

def resolve_token() -> str:
    """The token huggingface_hub would use (``HF_TOKEN``, then the login cache); a HubError if there is none."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    return token


def assert_no_secret(folder: Path, secret: str) -> None:
    """Refuse to upload a folder in which any file contains ``secret`` (the token must never be pushed)."""
    needle = secret.encode()
    for path in folder.rglob("*"):
        if path.is_file() and _contains(path, needle):
            raise HubError(f"{path}: contains the Hugging Face token; refusing to upload")


def _contains(path: Path, needle: bytes, chunk: int = 1 << 20) -> bool:
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-len(needle):]
    return False


def upload(folder: Path, repo_id: str, repo_type: str, private: bool, endpoint: str | None = None,
           large: bool = False) -> str:
    """Create the repo if needed and upload ``folder``; Hub errors become one-line HubErrors."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    token = resolve_token()
    assert_no_secret(folder, token)
    # HF_ENDPOINT is read here, not at import time as huggingface_hub.constants does
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if large:
            api.upload_large_folder(repo_id=repo_id, folder_path=folder, repo_type=repo_type, private=private)
        else:
            # stale shards from an earlier, larger push would silently join the dataset: replace data/
            api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type=repo_type,
                              commit_message=f"textbook push: {folder.name}",
                              delete_patterns=["data/**", "figures/**"] if repo_type == "dataset" else None)
    except OfflineModeIsEnabled:
        raise HubError("HF_HUB_OFFLINE=1 is set: unset it to push to the Hub") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        hint = {401: "the token is invalid or expired (set HF_TOKEN or run `hf auth login`)",
                403: "the token lacks write access to this namespace",
                404: "no such repo or namespace"}.get(status, _first_line(e))
        raise HubError(f"{repo_id}: Hub answered {status}: {hint}") from None
    except (httpx2.TransportError, OSError) as e:
        raise HubError(f"{repo_id}: cannot reach {api.endpoint}: {_first_line(e)}") from None
    except ValueError as e:  # e.g. README metadata rejected by the Hub's validator
        raise HubError(f"{repo_id}: {_first_line(e)}") from None
    return str(url)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
