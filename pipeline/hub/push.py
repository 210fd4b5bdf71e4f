"""`textbook push`: assemble the exact upload folder, check it, then create the Hub repo and upload it.

Flow: validate the repo id → resolve the token (``HF_TOKEN`` or the login cache, huggingface_hub's
own order; a dry run goes on without one) → assemble ``RUN_DIR/push/`` (dataset) or
``RUN_DIR/push_model/`` (``--model``) in a temporary folder → :func:`check_upload`, the same checks for
a dry run and a real push (shards match their manifests, ``card/`` is not stale, no secret in any
file) → rename it into place and list it → stop here on ``--dry-run`` →
``create_repo(exist_ok=True)`` → ``upload_folder`` (or ``upload_large_folder`` above
``hub.large_folder_gb``). The token is only ever handed to ``HfApi``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import BaseModel, SecretStr

from pipeline.config import Config, public_dict
from pipeline.errors import HubError
from pipeline.hub.artifacts import load_artifacts
from pipeline.hub.card import build_dataset_card, build_model_card, model_repo_id, require_run_dir, sft_chats
from pipeline.hub.checkpoints import final_checkpoint
from pipeline.hub.config import HubConfig
from pipeline.hub.layout import (
    CARD_FILE,
    CLASSIFIER_DIR,
    DATA_DIR,
    FIGURES_DIR,
    MANIFESTS_DIR,
    data_configs,
    write_data,
)
from pipeline.hub.provenance import check_card_fresh, public_data, verify_outputs, verify_parents
from pipeline.io import atomic_dir, check_writable, copy_file, read_json, write_json
from pipeline.rundir import PHASES, TRAIN_SUMMARY, RunDir, manifest_path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")

_RUN = RunDir(Path())  # the run directory's layout, relative to its root
# run-dir file -> path in the dataset repo: the provenance a reader of the card can check
PROVENANCE = {
    manifest_path(_RUN.generated).as_posix(): f"{MANIFESTS_DIR}/generate.json",
    manifest_path(_RUN.annotations).as_posix(): f"{MANIFESTS_DIR}/annotate.json",
    manifest_path(_RUN.filtered).as_posix(): f"{MANIFESTS_DIR}/filter.json",
    _RUN.filter_stats.as_posix(): f"{MANIFESTS_DIR}/filter_stats.json",
    _RUN.classifier_report.as_posix(): f"{CLASSIFIER_DIR}/report.json",
    _RUN.classifier_figure.as_posix(): f"{CLASSIFIER_DIR}/report.png",
    **{(_RUN.checkpoint(p) / TRAIN_SUMMARY).as_posix(): f"{MANIFESTS_DIR}/train_{p}.json" for p in PHASES},
}
# files of a save_pretrained checkpoint folder that belong on the Hub (not state/, tensorboard/)
_MODEL_SKIP = {CARD_FILE}
# a configured secret shorter than this ("EMPTY", "none" for a local server) is not a credential
_MIN_SECRET = 12


def push(cfg: Config, repo_id: str | None = None, private: bool = False, dry_run: bool = False,
         model: bool = False, restart: bool = False) -> int:
    """Assemble the upload folder and push it (``model=True``: the final checkpoint with its model card).

    A dry run runs every check a real push runs; it only skips asking for a token and uploading.
    The upload folder is rebuilt whole each time (so ``restart``, which every stage accepts, has
    nothing to discard).
    """
    run_dir = require_run_dir(cfg.run_dir)
    hub = cfg.hub
    repo_id = repo_id or (model_repo_id(hub) if model else hub.repo_id)
    if repo_id is None and not dry_run:
        raise HubError("no repo id: pass --repo-id ORG/NAME or set hub.repo_id")
    if repo_id is not None:
        check_repo_id(repo_id)
    if repo_id and not model:
        hub = hub.model_copy(update={"repo_id": repo_id})
    token = known_token() if dry_run else resolve_token()
    dest = RunDir(run_dir).push_model if model else RunDir(run_dir).push
    check_writable(HubError, dest)
    with atomic_dir(dest) as folder:
        if model:
            assemble_model(hub, run_dir, folder, cfg.seed)
        else:
            assemble_dataset(hub, run_dir, folder, cfg.seed, sft_chats(cfg.train, run_dir))
        check_upload(run_dir, folder, upload_secrets(cfg, token), shown_as=dest.name)
    total = print_listing(dest)
    if dry_run:
        print(f"dry run: nothing uploaded; {dest} is exactly what would be pushed"
              + (f" to {repo_id}" if repo_id else "") + " (every check of a real push passed)")
        return 0
    assert repo_id is not None and token is not None
    url = upload(dest, repo_id, token, repo_type="model" if model else "dataset",
                 private=private or hub.private, endpoint=hub.endpoint,
                 large=total > hub.large_folder_gb * 1e9)
    _record_push(run_dir, "model" if model else "dataset", repo_id)
    print(f"pushed {dest} to {url}")
    return 0


def check_repo_id(repo_id: str) -> str:
    """``ORG/NAME`` with the Hub's characters; anything else is a one-line HubError."""
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id or repo_id.endswith((".", "-")):
        raise HubError(f"repo id {repo_id!r} is malformed: expected ORG/NAME (letters, digits, '-', '_', '.')")
    return repo_id


def check_upload(run_dir: Path, folder: Path, secrets: dict[str, str], shown_as: str = "push") -> None:
    """Every check an upload folder must pass, for a dry run and a real push alike.

    The run's shards still match the manifests that list them, ``card/`` was built from the
    manifests as they are now, and no file holds one of ``secrets`` ({what: value}, see
    :func:`upload_secrets`). ``shown_as`` names the folder in messages (``folder`` may be its
    temporary stand-in).
    """
    run_dir = Path(run_dir)
    verify_outputs(run_dir)
    verify_parents(run_dir)
    check_card_fresh(run_dir)
    for name, value in secrets.items():
        assert_no_secret(folder, value, name, shown_as)


def upload_secrets(cfg: BaseModel, token: str | None) -> dict[str, str]:
    """{what: value} no uploaded file may hold: the configured secrets long enough to be credentials
    (:func:`configured_secrets`, which walks the whole config), then the Hugging Face token."""
    secrets = {name: value for name, value in configured_secrets(cfg).items() if len(value) >= _MIN_SECRET}
    if token:
        secrets["the Hugging Face token"] = token
    return secrets


def configured_secrets(cfg: BaseModel) -> dict[str, str]:
    """{what: value} of the secrets a run knows: every ``SecretStr`` of the config (the whole of it: any
    section may hold one), any other value ``public_dict`` strips, and OPENAI_API_KEY."""
    found: dict[str, str] = {}

    def walk(node: object, public: object, key: str) -> None:
        if isinstance(node, SecretStr):
            found[f"config key {key!r}"] = node.get_secret_value()
        elif isinstance(node, BaseModel):
            for name in type(node).model_fields:
                walk(getattr(node, name), public.get(name) if isinstance(public, dict) else None,
                     f"{key}.{name}" if key else name)
        elif isinstance(node, str) and node and public is None:
            found[f"config key {key!r}"] = node

    walk(cfg, public_dict(cfg), "")
    if os.environ.get("OPENAI_API_KEY"):
        found["OPENAI_API_KEY"] = os.environ["OPENAI_API_KEY"]
    return found


# --- assembling ----------------------------------------------------------------------------------

def assemble_dataset(hub: HubConfig, run_dir: Path, folder: Path, seed: int,
                     chats: dict[str, list[dict[str, str]]] | None) -> Path:
    """Write the dataset upload files into ``folder``: README.md, figures/, reproduce/, data/, manifests/.

    The published manifests have their local paths made public, as the card shows them.
    """
    art = load_artifacts(run_dir, hub.max_card_rows, seed)
    configs = data_configs(run_dir, chats)
    if not configs:
        raise HubError(f"{run_dir}: no data to publish (no generated or filtered shards); run the stages first")
    write_data(configs, folder)
    for source, target in PROVENANCE.items():
        if not (run_dir / source).exists():
            continue
        if source.endswith(".json"):
            write_json(public_data(read_json(run_dir / source), run_dir), folder / target)
        else:
            copy_file(run_dir / source, folder / target)
    build_dataset_card(hub, art, configs, folder, seed)
    return folder


def assemble_model(hub: HubConfig, run_dir: Path, folder: Path, seed: int) -> Path:
    """Write the model upload files into ``folder``: the final checkpoint's files plus its model card."""
    art = load_artifacts(run_dir, hub.max_card_rows, seed)
    phase = final_checkpoint(art, hub.model_checkpoint)
    if phase is None:
        raise HubError(f"{RunDir(run_dir).checkpoints}: no trained checkpoint to push "
                       "(run `textbook train --phase 1` first)")
    source = art.checkpoints[phase]["path"]
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in _MODEL_SKIP and not path.name.startswith("."):
            copy_file(path, folder / path.name)
    build_model_card(hub, art, folder)
    return folder


def _record_push(run_dir: Path, kind: str, repo_id: str) -> None:
    """Remember the repo a real push published to (``RUN_DIR/pushed.json``): the model card links the dataset."""
    path = RunDir(run_dir).pushed
    try:
        record = read_json(path) if path.is_file() else {}
    except (OSError, ValueError):
        record = {}
    write_json({**(record if isinstance(record, dict) else {}), kind: repo_id}, path)


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

def known_token() -> str | None:
    """The token huggingface_hub would use (``HF_TOKEN``, then the login cache), None when there is none."""
    from huggingface_hub import get_token

    return get_token() or None


def resolve_token() -> str:
    """:func:`known_token`, or a HubError when there is none (a real push needs one)."""
    token = known_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    return token


def assert_no_secret(folder: Path, secret: str, what: str = "the Hugging Face token",
                     shown_as: str | None = None) -> None:
    """Refuse a folder in which any file contains ``secret``; the message names the file, never the secret."""
    needle = secret.encode()
    sources = {target: source for source, target in PROVENANCE.items()}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and _contains(path, needle):
            rel = path.relative_to(folder).as_posix()
            origin = f" (copied from {sources[rel]})" if rel in sources else ""
            raise HubError(f"{shown_as or folder.name}/{rel}{origin}: contains {what}; refusing to upload "
                           "(nothing was written or pushed)")


def _contains(path: Path, needle: bytes, chunk: int = 1 << 20) -> bool:
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-len(needle):]
    return False


def upload(folder: Path, repo_id: str, token: str, repo_type: str, private: bool, endpoint: str | None = None,
           large: bool = False) -> str:
    """Create the repo if needed and upload ``folder`` (checked by :func:`check_upload`); Hub errors
    become one-line HubErrors."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

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
                              delete_patterns=[f"{DATA_DIR}/**", f"{FIGURES_DIR}/**"] if repo_type == "dataset" else None)
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
