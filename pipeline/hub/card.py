"""`textbook card`: the dataset card (a real datasheet) and the model card of a run.

Flow: read the run's artifacts → compute each datasheet section → render the Jinja template →
validate with ``huggingface_hub.DatasetCard`` / ``ModelCard`` → write ``RUN_DIR/card/``:
``README.md``, ``figures/*.png``, ``reproduce/*.yaml`` and ``model/README.md``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from pipeline.config import Config, public_dict
from pipeline.errors import HubError
from pipeline.hub import checkpoints, datasheet, downstream
from pipeline.hub.artifacts import RunArtifacts, load_artifacts
from pipeline.hub.config import HubConfig
from pipeline.hub.figures import seed_figures
from pipeline.hub.layout import (
    CARD_FILE,
    FIGURES_DIR,
    MODEL_CARD_DIR,
    DataConfig,
    data_configs,
)
from pipeline.hub.provenance import card_lineage, lineage_chain, verify_outputs, verify_parents
from pipeline.hub.reproduce import reproduce_section, write_reproduce_configs
from pipeline.io import (
    atomic_dir,
    build_manifest,
    check_writable,
    copy_file,
    read_json,
    write_json,
    write_text,
)
from pipeline.rundir import LOSS_FIGURE, PHASES, SHARD_GLOB, RunDir, manifest_path
from pipeline.train.config import TrainConfig

REQUIRED_METADATA = ("license", "language", "task_categories", "size_categories", "tags", "configs")

_RUN = RunDir(Path())  # the run directory's layout, relative to its root: how the card names a file


def write_card(cfg: Config, restart: bool = False) -> int:
    """Write the dataset card folder and the model card to ``RUN_DIR/card/``; print where they are.

    The shards must still match the manifests that list them (:func:`verify_outputs`), and
    ``card/manifest.json`` records the digests of the manifests read, so ``push`` can tell a stale card.
    ``card/`` is replaced whole: a failure leaves the previous card as it was (so ``restart``, which
    every stage accepts, has nothing to discard).
    """
    run_dir = require_run_dir(cfg.run_dir)
    check_writable(HubError, RunDir(run_dir).card)
    verify_outputs(run_dir)
    verify_parents(run_dir)
    art = load_artifacts(run_dir, cfg.hub.max_card_rows, cfg.seed)
    configs = data_configs(run_dir, sft_chats(cfg.train, run_dir))
    out = RunDir(run_dir).card
    with atomic_dir(out) as tmp:
        build_dataset_card(cfg.hub, art, configs, tmp, cfg.seed)
        model_readme = build_model_card(cfg.hub, art, tmp / MODEL_CARD_DIR)
        hub = public_dict(cfg.hub)
        write_json(build_manifest("card", {"hub": hub}, lineage=card_lineage(run_dir, {"hub": hub})),
                   manifest_path(tmp))
    print(f"dataset card: {out / CARD_FILE}")
    print(f"model card:   {out / MODEL_CARD_DIR / CARD_FILE}" if model_readme
          else "model card:   skipped (no checkpoint)")
    for note in art.notes:
        print(f"  missing: {note}")
    return 0


def build_dataset_card(hub: HubConfig, art: RunArtifacts, configs: list[DataConfig], folder: Path,
                       seed: int) -> Path:
    """Render and validate the dataset card into ``folder`` (README.md, figures/, reproduce/);
    ``seed`` draws the samples of the diversity metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    figures = folder / FIGURES_DIR
    run = art.layout
    generated_manifest = art.relative(manifest_path(run.generated))
    seeds = section(art, f"{art.relative(run.generated)}/{SHARD_GLOB}", datasheet.seed_section)
    context = {
        "title": hub.pretty_name or _title(hub, art.run_dir),
        "repo_id": hub.repo_id or f"ORG/{art.run_dir.name}",
        "repo_type": "dataset",
        "code_url": hub.code_url,
        "configs": configs,
        "generation": section(art, generated_manifest, datasheet.generation_section),
        "seeds": seeds,
        "seed_figures": seed_figures(seeds, figures),
        "diversity": section(art, generated_manifest, datasheet.diversity_section, seed),
        "classifier": section(art, art.relative(run.classifier_report), datasheet.classifier_section),
        "classifier_figure": _copy_figure(art.classifier_figure, figures, "classifier_report.png"),
        "filter": section(art, art.relative(run.filter_stats), datasheet.filter_section),
        "filter_figure": _copy_figure(run.filter_report, figures, "filter_report.png"),
        "training": checkpoints.training_section(art),
        "untrained": [p for p in PHASES if p not in art.checkpoints],
        "downstream": {phase: section(art, _RUN.eval.as_posix(), lambda _, r=r: downstream.eval_section(r))
                       for phase, r in art.evals.items()},
        "data_ab": section(art, _RUN.compare_table.as_posix(), lambda a: downstream.compare_section(a.run_dir)),
        "reproduce": reproduce_section(art.manifests, art.run_dir),
        "lineage": lineage_chain(art.run_dir),
        "notes": art.notes,
    }
    context["metadata_yaml"] = _yaml(dataset_metadata(hub, configs, art.run_dir))
    text = render("dataset_card.md.j2", context, _missing_note(art))
    validate_dataset_card(text, configs)
    write_reproduce_configs(context["reproduce"], folder)
    return write_text(text, folder / CARD_FILE)


def section(art: RunArtifacts, source: str, build: Any, *args: Any) -> Any:
    """``build(art, *args)``, or None plus a note naming ``source`` when the artifact lacks a field the card reads."""
    try:
        return build(art, *args)
    except (KeyError, TypeError, AttributeError) as e:  # written by another version of the stage
        art.notes.append(f"{source}: unexpected layout ({type(e).__name__}: {e}); its section is left out")
        return None


def dataset_metadata(hub: HubConfig, configs: list[DataConfig], run_dir: Path) -> dict[str, Any]:
    """The card's YAML header: license, language, task categories, size, tags, and one config per data split."""
    largest = max((c.rows for c in configs), default=0)
    return {
        "license": hub.license,
        "language": list(hub.language),
        "pretty_name": hub.pretty_name or _title(hub, run_dir),
        "task_categories": ["text-generation"],
        "size_categories": [size_category(largest)],
        "tags": sorted({"synthetic", *hub.tags}),
        "configs": [
            {"config_name": c.name, "data_files": [{"split": c.split, "path": c.pattern}],
             **({"default": True} if i == 0 else {})}
            for i, c in enumerate(configs)
        ],
    }


def size_category(rows: int) -> str:
    """The Hub's size bucket for a row count: ``n<1K``, ``1K<n<10K``, ... ``n>1T``."""
    bounds = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    if rows < 1_000:
        return "n<1K"
    exponent = min(int(math.log10(rows)) - 3, len(bounds) - 1)
    return f"n>{bounds[-1]}" if exponent >= len(bounds) - 1 else f"{bounds[exponent]}<n<{bounds[exponent + 1]}"


def validate_dataset_card(text: str, configs: list[DataConfig]) -> Any:
    """Parse ``text`` back with ``huggingface_hub.DatasetCard``; the metadata must hold every required field."""
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard(text)
    except ValueError as e:
        raise HubError(f"dataset card: invalid metadata: {str(e).splitlines()[0]}") from None
    data = card.data.to_dict()
    missing = [k for k in REQUIRED_METADATA if not data.get(k) and not (k == "configs" and not configs)]
    if missing:
        raise HubError(f"dataset card: metadata lacks {', '.join(missing)}")
    if "synthetic" not in data["tags"]:
        raise HubError("dataset card: the tags must include 'synthetic'")
    named = {c["config_name"] for c in data.get("configs", [])}
    if named != {c.name for c in configs}:
        raise HubError(f"dataset card: configs {sorted(named)} do not match the data {[c.name for c in configs]}")
    return card


def build_model_card(hub: HubConfig, art: RunArtifacts, folder: Path) -> Path | None:
    """Render and validate the model card of the final checkpoint into ``folder/README.md`` (None if no checkpoint)."""
    from huggingface_hub import ModelCard

    phase = checkpoints.final_checkpoint(art, hub.model_checkpoint)
    if phase is None:
        if hub.model_checkpoint:
            raise HubError(f"config key 'hub.model_checkpoint': no checkpoint at "
                           f"{art.layout.checkpoint(hub.model_checkpoint)}")
        return None
    ckpt = art.checkpoints[phase]
    metadata = {
        "license": hub.license,
        "language": list(hub.language),
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": sorted({"synthetic-data", "textbooks", "small-lm", *hub.tags} - {"synthetic"}),
        **({"datasets": [dataset_repo]} if (dataset_repo := dataset_repo_id(hub, art.run_dir)) else {}),
    }
    context = {
        "title": f"{hub.pretty_name or _title(hub, art.run_dir)} ({phase} checkpoint)",
        "phase": phase,
        "repo_id": model_repo_id(hub),
        "repo_type": "model",
        "code_url": hub.code_url,
        "dataset_repo_id": dataset_repo,
        "architecture": checkpoints.architecture(ckpt.get("config")),
        "parameters": checkpoints.count_parameters(ckpt["path"]) or (ckpt.get("summary") or {}).get("parameters"),
        "phases": checkpoints.training_section(art),
        "downstream": section(art, _RUN.eval.as_posix(), lambda a: downstream.eval_section(a.evals.get(phase))),
        "loss_figure": _copy_figure(ckpt["path"] / LOSS_FIGURE, folder, LOSS_FIGURE),
        "reproduce": reproduce_section(art.manifests, art.run_dir),
        "lineage": lineage_chain(art.run_dir, start=manifest_path(ckpt["path"])),
        "metadata_yaml": _yaml(metadata),
    }
    text = render("model_card.md.j2", context, _missing_note(art))
    try:
        card = ModelCard(text)
    except ValueError as e:
        raise HubError(f"model card: invalid metadata: {str(e).splitlines()[0]}") from None
    if card.data.to_dict().get("pipeline_tag") != "text-generation":
        raise HubError("model card: metadata did not parse back")
    write_reproduce_configs(context["reproduce"], folder)
    return write_text(text, folder / CARD_FILE)


def dataset_repo_id(hub: HubConfig, run_dir: Path) -> str | None:
    """The dataset repo the model was trained on: ``hub.repo_id``, else the one this run was last pushed
    to (``RUN_DIR/pushed.json``, written by a real push)."""
    if hub.repo_id:
        return hub.repo_id
    record = RunDir(run_dir).pushed
    try:
        repo = read_json(record).get("dataset") if record.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    return repo if isinstance(repo, str) else None


def model_repo_id(hub: HubConfig) -> str | None:
    if hub.model_repo_id:
        return hub.model_repo_id
    return f"{hub.repo_id}-model" if hub.repo_id else None


def sft_chats(train: TrainConfig, run_dir: Path) -> dict[str, list[dict[str, str]]] | None:
    """The conversations SFT trains on, by the same selection (``train.sft`` and its source), so the
    card's ``sft`` config is what was trained on; None when the run has none."""
    from pipeline.errors import TrainError
    from pipeline.train.sft import sft_conversations

    spec = train.sources.get(train.sft.source)
    if spec is None or not spec.paths:
        return None
    try:
        return sft_conversations(train.sft, spec, run_dir)[0]
    except TrainError:  # no chat rows (or none left after the source's filters): no sft config
        return None


# --- rendering -----------------------------------------------------------------------------------

def render(template: str, context: dict[str, Any], missing: Any) -> str:
    env = Environment(loader=FileSystemLoader(Path(__file__).parent), undefined=StrictUndefined,
                      autoescape=False, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, pct=_pct, f1=_fixed(1), f2=_fixed(2), f3=_fixed(3), sig=_significant, usd=_usd,
                       cell=_cell)
    env.globals["missing"] = missing
    return env.get_template(template).render(**context)


def _missing_note(art: RunArtifacts) -> Any:
    def missing(prefix: str) -> str:
        found = [n for n in art.notes if n.startswith(prefix)]
        return "; ".join(found) if found else f"{prefix}: nothing recorded"

    return missing


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{int(round(value)):,}" if isinstance(value, (int, float)) else str(value)


def _pct(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _fixed(digits: int) -> Any:
    def fmt(value: Any) -> str:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"

    return fmt


def _significant(value: Any) -> str:
    """A threshold as it cuts: six significant digits, so 3.2e-05 never reads as 0.000."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return "-"
    return f"{value:.6g}"


def _usd(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"${value:,.4f}"


def _cell(value: Any) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, line breaks as spaces."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _title(hub: HubConfig, run_dir: Path) -> str:
    name = (hub.repo_id or "").split("/")[-1] or Path(run_dir).name
    return f"Synthetic textbooks: {name}"


def _copy_figure(source: Path | None, folder: Path, name: str) -> str | None:
    if source is None or not Path(source).exists():
        return None
    copy_file(source, folder / name)  # with the umask's mode, not the source's
    return name


def require_run_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HubError(f"run_dir {run_dir}: no such run directory (set run_dir=... or run the stages first)")
    return run_dir
