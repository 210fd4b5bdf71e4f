"""Downstream-eval speed and agreement: `textbook eval`'s scorer against a plain transformers loop and
lm-evaluation-harness on the same checkpoint and the same items, in one script.

    .venv/bin/python bench/eval.py                         # CPU, tiny preset, 200 MMLU items, 0-shot
    .venv/bin/python bench/eval.py --preset 100m --device cuda --items 2000 --batch-size 64

The items are real MMLU test questions (``benchmarks/mmlu/test`` of ``--data``, see
bench/shared_data.py; cloze form, four choices; without them, four-choice cloze items made of
sentences of Python's documentation stand in: the last word, against three others) written as the
project's ``mc_jsonl`` layout, which lm-eval reads through a task YAML of the same
protocol (``doc_to_text: query``, choices, gold, target delimiter " "). The model is the project's
Llama preset with random weights and a BPE trained on pydoc's topic pages: speed does not depend on
the weights, and agreement of accuracies on a random model checks the scoring protocol, not luck.
lm-eval is installed into its own environment (``bench/.venv-lmeval``, never a runtime dependency);
``--no-lm-eval`` skips it.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import shared_data  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.eval.run import load_model, score_checkpoint  # noqa: E402
from pipeline.eval.score import encode_pair, special_prefix  # noqa: E402
from pipeline.train.model import build_model  # noqa: E402
from pipeline.train.tokenizer import train_bpe  # noqa: E402

LMEVAL_VENV = ROOT / "bench" / ".venv-lmeval"


def write_items(path: Path, n: int, seed: int, given: Path | None) -> tuple[int, str]:
    """``n`` items in the mc_jsonl layout at ``path``; (items written, what they are)."""
    mmlu = shared_data.find("benchmarks/mmlu/test", "MMLU test questions", given,
                            stand_in="cloze items made of Python's documentation")
    if mmlu is None:
        return write_standin_items(path, n, seed), "Python-docs cloze"
    rows = []
    for f in sorted(glob.glob(str(mmlu / "*.csv"))):
        with open(f, newline="", encoding="utf-8") as fh:
            for r in csv.reader(fh):
                if r and r[0] != "question":
                    rows.append(r)
    random.Random(seed).shuffle(rows)
    with open(path, "w", encoding="utf-8") as out:
        for r in rows[:n]:
            answer = int(r[-1]) if r[-1].isdigit() else "ABCD".index(r[-1])
            out.write(json.dumps({"query": f"Question: {r[0].strip()}\nAnswer:", "choices": r[1:5],
                                  "gold": answer}) + "\n")
    return min(n, len(rows)), "MMLU"


def write_standin_items(path: Path, n: int, seed: int) -> int:
    """Four-choice cloze items from sentences of Python's documentation: the sentence less its last
    word is the context, that word and three others of the docs are the choices."""
    rng = random.Random(seed)
    sentences = [s.split() for text in shared_data.python_docs() for s in text.replace("\n", " ").split(". ")]
    sentences = [w for w in sentences if 8 <= len(w) <= 40 and w[-1].isalpha()]
    vocabulary = sorted({w[-1] for w in sentences})
    rng.shuffle(sentences)
    with open(path, "w", encoding="utf-8") as out:
        for words in sentences[:n]:
            choices = [words[-1], *rng.sample([v for v in vocabulary if v != words[-1]], 3)]
            rng.shuffle(choices)
            out.write(json.dumps({"query": " ".join(words[:-1]), "choices": choices,
                                  "gold": choices.index(words[-1])}) + "\n")
    return min(n, len(sentences))


def build_checkpoint(path: Path, preset: str, vocab: int) -> None:
    from pydoc_data.topics import topics

    tok = train_bpe(list(topics.values()), vocab)
    cfg = load_config(None, [f"train.model.preset={preset}"])
    model = build_model(cfg.train.model, tok, seed=0)
    model.save_pretrained(path)
    tok.save_pretrained(path)


def plain_loop(path: str, items: Path, device: str) -> tuple[float, float, int]:
    """(seconds, accuracy, items): one unbatched forward per (item, choice): what a first script does."""
    model, tok, dev = load_model(path, device)
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    start, correct = time.perf_counter(), 0
    with torch.no_grad():
        for r in rows:
            lls = []
            for choice in r["choices"]:
                ctx, cont = encode_pair(tok, r["query"], " " + choice, special_prefix(tok, None))
                ids = torch.tensor([ctx + cont], device=dev)
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
                lls.append(float(logp[len(ctx) - 1:].gather(1, ids[0, len(ctx):, None]).sum()))
            correct += int(max(range(len(lls)), key=lls.__getitem__) == r["gold"])
    return time.perf_counter() - start, correct / len(rows), len(rows)


def ensure_lm_eval() -> Path:
    python = LMEVAL_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing lm-eval into {LMEVAL_VENV} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(LMEVAL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "lm_eval", "transformers", "accelerate"], check=True)
    return python


def run_lm_eval(python: Path, path: str, items: Path, work: Path, batch: int, device: str) -> tuple[float, dict]:
    """(seconds of the whole lm_eval process, its metrics) on the same items through a task YAML."""
    tasks = work / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "tb_mc.yaml").write_text(
        "task: tb_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {items}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{query}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    out = work / "lm_eval_out"
    cmd = [str(python), "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={path},dtype=float32",  # lm-eval's default BOS handling, as ours
           "--tasks", "tb_mc", "--include_path", str(tasks), "--batch_size", str(batch),
           "--device", "cuda" if device == "cuda" else "cpu", "--output_path", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"lm_eval failed:\n{proc.stderr[-3000:]}")
    result = json.loads(sorted(out.rglob("results*.json"))[-1].read_text())["results"]["tb_mc"]
    return seconds, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-lm-eval", action="store_true")
    ap.add_argument("--checkpoint", default=None,
                    help="a save_pretrained folder to score instead of the random preset model (e.g. SmolLM2)")
    shared_data.add_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        items = work / "items.jsonl"
        n, kind = write_items(items, args.items, seed=0, given=args.data)
        ckpt = work / "ckpt"
        if args.checkpoint:
            ckpt = Path(args.checkpoint)
        else:
            build_checkpoint(ckpt, args.preset, args.vocab)
        tasks = json.dumps([{"name": "mmlu_cloze", "path": str(items), "format": "mc_jsonl", "max_items": n}])
        cfg = load_config(None, [f"run_dir={work / 'run'}", f"eval.tasks={tasks}",
                                 f"eval.batch_size={args.batch_size}", f"eval.device={args.device}"])
        start = time.perf_counter()
        ours = score_checkpoint(str(ckpt), cfg.eval, cfg.run_dir, cfg.train.sources, cfg.train.val_fraction)
        ours_s = time.perf_counter() - start
        o = ours["tasks"]["mmlu_cloze"]
        rows = [("textbook eval (batched)", ours_s, o["accuracy"], o["accuracy_norm"])]
        plain_s, plain_acc, _ = plain_loop(str(ckpt), items, args.device)
        rows.append(("plain transformers loop (1 forward per choice)", plain_s, plain_acc, float("nan")))
        if not args.no_lm_eval:
            lm_s, lm = run_lm_eval(ensure_lm_eval(), str(ckpt), items, work, args.batch_size, args.device)
            rows.append(("lm-eval (whole process)", lm_s, lm["acc,none"], lm["acc_norm,none"]))
    print(f"\n{n} {kind} items, 4 choices, 0-shot, {args.checkpoint or 'preset ' + args.preset}, device {args.device}, "
          f"{args.threads} threads")
    print(f"{'runner':<50}{'seconds':>9}{'items/s':>10}{'vs ours':>9}{'acc':>8}{'acc_norm':>10}")
    for name, seconds, acc, acc_norm in rows:
        print(f"{name:<50}{seconds:>9.2f}{n / seconds:>10.1f}{ours_s / seconds:>9.2f}{acc:>8.3f}{acc_norm:>10.3f}")
    print(f"textbook eval scoring alone: {ours['seconds']:.2f} s = {n / ours['seconds']:.1f} items/s "
          "(the rest is loading the tasks and the model)")
    if len(rows) == 3:
        agree = abs(rows[0][2] - rows[2][2]) < 1e-9 and abs(rows[0][3] - rows[2][3]) < 1e-9
        print(f"accuracy agrees with lm-eval: {agree}")


if __name__ == "__main__":
    main()
