"""Training throughput: the project's loop (`pipeline.train.loop.run_phase`) against a plain PyTorch
forward + backward + AdamW step of the same model on the same batches, in one script.

    .venv/bin/python bench/train.py                                   # CPU, tiny model (target >= 0.9)
    .venv/bin/python bench/train.py --device cuda --preset 100m --seq-len 1024 --batch-size 16
                                                                      # GPU: bf16 + torch.compile, MFU

The corpus is real English prose that every Python has (pydoc's topic pages), written as the
pipeline's filtered Parquet in a temporary run directory. Tokens/s is the median over steady-state
steps (the first 20% are warm-up: allocation, compilation).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_config  # noqa: E402
from pipeline.io import shard_path, write_parquet  # noqa: E402
from pipeline.rundir import EDU_SCORE, ID, METRICS, SOURCE, TEXT, RunDir  # noqa: E402
from pipeline.train.data import MixtureSampler  # noqa: E402
from pipeline.train.loop import run_phase  # noqa: E402
from pipeline.train.model import MODEL_PRESETS, build_model, flops_per_token, peak_flops  # noqa: E402


def corpus(run_dir: Path, repeat: int) -> None:
    from pydoc_data.topics import topics

    texts = [t for t in topics.values() if len(t) > 200] * repeat
    df = pd.DataFrame({ID: [f"doc-{i}" for i in range(len(texts))], TEXT: texts,
                       SOURCE: ["pydoc"] * len(texts), EDU_SCORE: [3.0] * len(texts)})
    write_parquet(df, shard_path(RunDir(run_dir).filtered, 0))


def plain_baseline(cfg, tok, rows: MixtureSampler, steps: int, batch: int, device: torch.device,
                   compile_: bool) -> list[float]:
    """Per-step tokens/s of the simplest correct loop: forward, cross-entropy, backward, AdamW step."""
    t = cfg.train
    model = build_model(t.model, tok, cfg.seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=t.phase1.lr, betas=t.betas, weight_decay=t.weight_decay,
                            fused=device.type == "cuda")
    fwd = torch.compile(model) if compile_ else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    rates = []
    for step in range(steps):
        t0 = time.perf_counter()
        x = torch.from_numpy(rows.rows(step * batch, batch)).to(device)
        with autocast:
            logits = fwd(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # the project's loop reads the loss every step too
        rates.append(batch * t.seq_len / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--preset", default="tiny", choices=list(MODEL_PRESETS))
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of both arms; best of each")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3, help="copies of the corpus (more rows to sample)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads for both arms (default: torch's); 1 steadies a shared CPU")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    run_dir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        measure(args, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def measure(args: argparse.Namespace, run_dir: Path) -> None:
    corpus(run_dir, args.repeat)
    tokens = args.steps * args.batch_size * args.seq_len
    cfg = load_config(None, [
        f"run_dir={run_dir}", f"train.device={args.device}", f"train.model.preset={args.preset}",
        f"train.seq_len={args.seq_len}", f"train.tokenizer.vocab_size={args.vocab}",
        f"train.phase1.tokens={tokens}", f"train.phase1.batch_size={args.batch_size}",
        "train.eval_every=0", f"train.checkpoint_every={args.steps}", "train.eval_domains={}",
    ])

    from pipeline.config import public_dict
    from pipeline.train.data import packed_source
    from pipeline.train.distributed import init_distributed
    from pipeline.train.plan import PhasePlan
    from pipeline.train.tokenizer import ensure_tokenizer, tokenizer_id

    tok = ensure_tokenizer(cfg.train, run_dir, cfg.seed, init_distributed(args.device), config=public_dict(cfg))
    src = packed_source("web", cfg.train.sources["web"], run_dir, tok, tokenizer_id(RunDir(run_dir).tokenizer),
                        args.seq_len, cfg.train.val_fraction)
    sampler = MixtureSampler({"web": src.train}, {"web": 1.0}, args.steps * args.batch_size, cfg.seed)
    device = torch.device(args.device)
    warm = args.steps // 5
    # alternate the arms and keep each arm's best round: on a shared machine, bursts of load from
    # other processes then hit both arms alike instead of whichever happened to run at that moment
    ours_tps, base_tps = 0.0, 0.0
    for i in range(args.rounds):
        base_rates = plain_baseline(cfg, tok, sampler, args.steps, args.batch_size, device,
                                    compile_=device.type == "cuda" and cfg.train.compile)
        base_tps = max(base_tps, statistics.median(base_rates[warm:]))
        out = RunDir(run_dir).checkpoint(f"round-{i}")
        ours = run_phase(cfg.train, run_dir, PhasePlan("phase1", out, None, cfg.train.phase1, cfg.seed,
                                                       config=public_dict(cfg)))
        ours_rates = [r["tokens_per_s"] for r in map(json.loads, (out / METRICS).read_text().splitlines())
                      if r["kind"] == "train"]
        ours_tps = max(ours_tps, statistics.median(ours_rates[warm:]))
    model = build_model(cfg.train.model, tok, 0)
    fpt, peak = flops_per_token(model, args.seq_len), peak_flops(device)
    mfu = (lambda tps: f"{100 * fpt * tps / peak:.1f}%") if peak else (lambda tps: "n/a (CPU)")
    params = sum(p.numel() for p in model.parameters())
    print(f"\ntrain throughput: preset={args.preset} ({params / 1e6:.2f}M params), seq_len={args.seq_len}, "
          f"batch={args.batch_size}, steps={args.steps}, device={args.device}"
          f"{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}, "
          f"threads={torch.get_num_threads()}")
    print(f"{'loop':<28}{'tokens/s':>12}{'MFU':>14}")
    print(f"{'plain fwd+bwd+step':<28}{base_tps:>12,.0f}{mfu(base_tps):>14}")
    print(f"{'pipeline.train.loop':<28}{ours_tps:>12,.0f}{mfu(ours_tps):>14}")
    print(f"ratio loop/plain: {ours_tps / base_tps:.3f} (target >= 0.9); final loss {ours['final_train_loss']:.3f}")


if __name__ == "__main__":
    main()
