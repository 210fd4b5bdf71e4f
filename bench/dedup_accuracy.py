"""Near-dedup accuracy on real text with planted near-duplicates, against brute-force Jaccard.

Real English prose (Python's own docs, man pages, news articles from --data, see bench/shared_data.py) is cut into
documents of 120-400 words; copies of some of them are planted with word edits at known rates.
Ground truth is the exact Jaccard of word 5-gram sets of EVERY pair (sparse matrix product).
Candidates are verified on the exact Jaccard of their shingle sets (the default). Reports
precision/recall of removed documents, pair recall per true-Jaccard bucket, an audit of
sampled clusters, and a threshold curve on human-graded text-reuse pairs.

    .venv/bin/python bench/dedup_accuracy.py [--quick] [--docs N] [--threshold 0.8]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
from scipy import sparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import shared_data  # noqa: E402

from filters.minhash import dedup_form, estimated_jaccard, minhash_signatures  # noqa: E402
from pipeline.cluster import dask_client  # noqa: E402
from pipeline.filter.dedup import minhash_dedup  # noqa: E402

EDIT_RATES = [0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1]
ARTICLES = "web/scrapinghub_articles.jsonl"


def real_texts() -> Iterator[str]:
    """Long real English texts available offline on this machine: Python's documentation, the news
    articles of ``--data`` when there (bench/shared_data.py), the man pages."""
    try:
        from pydoc_data.topics import topics
        yield from topics.values()
    except ImportError:
        pass
    path = shared_data.root() / ARTICLES
    if path.exists():
        yield from (json.loads(line)["text"] for line in path.open())
    for path in sorted(Path("/usr/share/man").glob("man[1-8]/*.gz")):
        yield shared_data.man_page_text(path)


def say_sources() -> None:
    """The ``data:`` line of a benchmark whose corpus is :func:`real_texts`."""
    path = shared_data.root() / ARTICLES
    print("data: Python's documentation, " + (f"news articles ({path}), " if path.exists() else
          f"no news articles ({path} not found: --data names its folder), ") + "the machine's man pages")


def real_documents(limit: int, min_words: int = 120, max_words: int = 400, seed: int = 0) -> list[str]:
    """Up to ``limit`` documents of ``min_words``..``max_words`` words: consecutive paragraphs merged."""
    docs: list[str] = []
    for text in real_texts():
        chunk: list[str] = []
        words = 0
        for para in re.split(r"\n\s*\n", text):
            n = len(para.split())
            if n == 0:
                continue
            chunk.append(" ".join(para.split()))
            words += n
            if words >= min_words:
                docs.append(" ".join(" ".join(chunk).split()[:max_words]))
                chunk, words = [], 0
        if len(docs) >= 4 * limit:
            break
    random.Random(seed).shuffle(docs)
    return docs[:limit]


def perturb(rng: random.Random, text: str, rate: float, vocabulary: list[str]) -> str:
    """Substitute, delete or insert words, each word touched with probability ``rate``."""
    out: list[str] = []
    for word in text.split():
        if rng.random() >= rate:
            out.append(word)
            continue
        op = rng.randrange(3)
        if op == 0:
            out.append(rng.choice(vocabulary))
        elif op == 2:
            out += [word, rng.choice(vocabulary)]
    return " ".join(out)


def shingle_matrix(texts: list[str], ngram: int = 5) -> sparse.csr_matrix:
    """Binary documents x distinct-word-5-gram matrix (exact n-grams, no hashing)."""
    ids: dict[tuple[str, ...], int] = {}
    indptr, indices = [0], []
    for text in texts:
        words = dedup_form(text).split()
        grams = {tuple(words[i:i + ngram]) for i in range(max(1, len(words) - ngram + 1))} if words else set()
        indices += [ids.setdefault(g, len(ids)) for g in grams]
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float32)
    return sparse.csr_matrix((data, indices, indptr), shape=(len(texts), max(1, len(ids))))


def true_jaccard(matrix: sparse.csr_matrix) -> np.ndarray:
    """Dense n x n exact Jaccard of every pair (diagonal 1)."""
    inter = (matrix @ matrix.T).toarray()
    sizes = np.asarray(matrix.sum(axis=1)).ravel()
    union = sizes[:, None] + sizes[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def components(adjacency: np.ndarray) -> np.ndarray:
    from scipy.sparse.csgraph import connected_components
    return connected_components(sparse.csr_matrix(adjacency), directed=False)[1]


def evaluate(out: pd.DataFrame, jac: np.ndarray, threshold: float, recall_at: float) -> dict:
    """Precision/recall of removed documents and pair recall, from brute-force Jaccard ``jac``.

    A removal is right when some kept member of its cluster is truly linked to it (a chain of true
    J >= threshold); a true pair is caught when both are in one cluster and not both kept.
    """
    n = len(out)
    cluster = out["cluster_id"].to_numpy()
    removed = out["near_dup"].to_numpy()
    adjacency = jac >= threshold
    np.fill_diagonal(adjacency, False)
    truth = components(adjacency)
    kept_links = set(zip(cluster[~removed], truth[~removed], strict=True))
    correct = removed & np.array([(c, t) in kept_links for c, t in zip(cluster, truth, strict=True)])
    should = n - len(np.unique(truth))
    i, j = np.triu_indices(n, 1)
    caught = (cluster[i] == cluster[j]) & (removed[i] | removed[j])
    high = jac[i, j] >= recall_at
    rows = []
    edges = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.01]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (jac[i, j] >= lo) & (jac[i, j] < hi)
        rows.append((f"[{lo:.2f},{min(hi, 1):.2f}{')' if hi < 1 else ']'}", int(sel.sum()),
                     float(caught[sel].mean()) if sel.any() else float("nan")))
    return {"removed": int(removed.sum()), "should_remove": should,
            "precision": float(correct.sum() / max(1, removed.sum())),
            "recall_docs": float(correct.sum() / max(1, should)),
            "pairs_at_recall": int(high.sum()),
            "pair_recall": float(caught[high].mean()) if high.any() else float("nan"),
            "buckets": rows}


def audit(out: pd.DataFrame, jac: np.ndarray, threshold: float, samples: int, seed: int = 0) -> dict:
    """Sample clusters; share of removed members whose true Jaccard with every kept member is < threshold."""
    multi = out.reset_index(drop=True)
    multi = multi[multi["cluster_size"] > 1].groupby("cluster_id")
    names = sorted(multi.groups)
    picked = random.Random(seed).sample(names, min(samples, len(names)))
    sims = []
    for name in picked:
        members = multi.get_group(name)
        kept = members.index[~members["near_dup"]].to_numpy()
        sims += [jac[kept, d].max() for d in members.index[members["near_dup"]]]
    sims = np.array(sims)
    return {"clusters": len(picked), "members": len(sims),
            "fp_rate": float((sims < threshold).mean()) if len(sims) else float("nan"),
            "min_jaccard": float(sims.min()) if len(sims) else float("nan")}


def graded_pairs_curve(num_perm: int, seed: int) -> None:
    """Threshold curve on the Clough & Stevenson human-graded pairs (true and estimated Jaccard)."""
    path = shared_data.find("near_dup/pairs.jsonl", "human-graded text-reuse pairs", None,
                            stand_in="nothing: the graded-pairs curve is skipped")
    if path is None:
        return
    pairs = pd.DataFrame([json.loads(line) for line in path.open()])
    texts = pairs["answer"].tolist() + pairs["source"].tolist()
    jac = true_jaccard(shingle_matrix(texts))
    n = len(pairs)
    pairs["true_j"] = jac[np.arange(n), np.arange(n) + n]
    sig = minhash_signatures(texts, num_perm=num_perm, seed=seed)
    pairs["est_j"] = estimated_jaccard(sig[:n], sig[n:])
    print("\nHuman-graded text-reuse pairs (near_dup/pairs.jsonl): share of pairs with estimated J >= t")
    thresholds = [0.3, 0.5, 0.6, 0.7, 0.8, 0.9]
    print(f"{'grade':<7}{'pairs':>6}{'mean J':>8}" + "".join(f"{'t=' + str(t):>8}" for t in thresholds))
    for grade in ("cut", "light", "heavy", "non"):
        g = pairs[pairs["category"] == grade]
        print(f"{grade:<7}{len(g):>6}{g['true_j'].mean():>8.2f}"
              + "".join(f"{(g['est_j'] >= t).mean():>8.2f}" for t in thresholds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpus for development")
    parser.add_argument("--docs", type=int, default=3000, help="real base documents")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--recall-at", type=float, default=0.85)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    shared_data.add_argument(parser)
    args = parser.parse_args()
    shared_data.use(args.data)
    say_sources()
    n_docs = 600 if args.quick else args.docs
    rng = random.Random(args.seed)

    base = real_documents(n_docs, seed=args.seed)
    vocabulary = sorted({w for d in base[:200] for w in d.split()})
    rows = [{"text": t, "planted_rate": 0.0} for t in base]
    for text in rng.sample(base, len(base) // 4):
        for _ in range(rng.choice([1, 1, 2, 3])):
            rate = rng.choice(EDIT_RATES)
            rows.append({"text": perturb(rng, text, rate, vocabulary), "planted_rate": rate})
    rng.shuffle(rows)
    corpus = pd.DataFrame(rows)
    corpus.insert(0, "id", [f"d{i:06d}" for i in range(len(corpus))])
    print(f"corpus: {len(base)} real documents + {len(corpus) - len(base)} planted copies "
          f"({corpus['text'].str.len().sum() / 1e6:.1f} MB), edit rates {EDIT_RATES}")

    t0 = time.perf_counter()
    jac = true_jaccard(shingle_matrix(corpus["text"].tolist()))
    print(f"brute-force Jaccard of {len(corpus) * (len(corpus) - 1) // 2:,} pairs: "
          f"{time.perf_counter() - t0:.1f} s")

    variants = [("exact-Jaccard verified, 128 perms (default)", {}),
                ("unverified, recall-weighted bands", {"verify": False}),
                ("verified, datasketch-balanced bands 9x13", {"bands": 9, "rows": 13}),
                ("verified, 256 permutations", {"num_perm": 256}),
                ("verified at J >= 0.75", {"verify_threshold": 0.75})]
    results = []
    logging.basicConfig(level=logging.WARNING)
    with dask_client(workers=args.workers):
        ddf = dd.from_pandas(corpus, npartitions=8)
        for name, options in variants:
            stats: dict = {}
            t0 = time.perf_counter()
            out = minhash_dedup(ddf, threshold=args.threshold, stats=stats, **options).compute()
            out = out.set_index("id").loc[corpus["id"]].reset_index()
            seconds = time.perf_counter() - t0
            removed = "\n".join(sorted(out.loc[out["near_dup"], "id"])).encode()
            results.append((name, stats, evaluate(out, jac, args.threshold, args.recall_at),
                            audit(out, jac, args.threshold, samples=100), seconds,
                            hashlib.sha256(removed).hexdigest()[:12]))

    t = args.threshold
    print(f"\nthreshold {t}; precision: removed doc linked to a kept doc of its cluster by a chain of true "
          f"J >= {t};\npair recall: pairs with true J >= {args.recall_at} put in one cluster with at least one of "
          "the two removed")
    print(f"{'variant':<44}{'perms':>6}{'bands':>6}{'rows':>5}{'cand':>7}{'verif':>7}{'removed':>8}{'should':>7}"
          f"{'prec':>7}{'rec':>7}{'pairRec':>8}{'auditFP':>8}{'s':>6}{'removed ids':>14}")
    for name, st, ev, au, seconds, digest in results:
        print(f"{name:<44}{st['num_perm']:>6}{st['bands']:>6}{st['rows']:>5}{st['candidate_pairs']:>7}{st['verified_pairs']:>7}"
              f"{ev['removed']:>8}{ev['should_remove']:>7}{ev['precision']:>7.3f}{ev['recall_docs']:>7.3f}"
              f"{ev['pair_recall']:>8.3f}{au['fp_rate']:>8.3f}{seconds:>6.1f}{digest:>14}")
    print("(removed ids: a digest of the removed documents' ids, the same for two code versions that decide alike)")
    name, st, ev, au, _, _ = results[0]
    print(f"\npair recall by true Jaccard ({name}):")
    print(f"{'true J':<14}{'pairs':>7}{'caught':>10}")
    for label, count, share in ev["buckets"]:
        print(f"{label:<14}{count:>7}{share:>10.3f}")
    print(f"\naudit ({name}): {au['clusters']} sampled clusters, {au['members']} removed members, "
          f"estimated false positive rate {au['fp_rate']:.3f} (lowest true J with a kept doc {au['min_jaccard']:.2f})")
    ok = ev["pair_recall"] >= 0.95 and ev["precision"] >= 0.98
    print(f"targets: pair recall >= 0.95 at J >= {args.recall_at}: {ev['pair_recall']:.3f}; "
          f"precision >= 0.98: {ev['precision']:.3f} -> {'PASS' if ok else 'FAIL'}")
    graded_pairs_curve(128, args.seed)


if __name__ == "__main__":
    main()
