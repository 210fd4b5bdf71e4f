"""Benchmark: generate throughput against a local OpenAI-compatible server with fixed latency.

With latency L per request and C requests in flight, the ideal rate is C/L. The table compares
(1) a bare asyncio + openai loop (``AsyncOpenAI`` + a semaphore, SDK defaults: what a user would
write by hand), (2) the pipeline's run_requests as ``textbook generate`` runs it against a server
(workers=1: one in-process Dask worker; shards, cluster-wide semaphore, ledger actor, journal,
Parquet), (3) the same on a warm LocalCluster of worker processes, (4) the plain generate path:
template rows planned (timed) and sent with the rephrase prompts' text, and (5) the same requests
as rephrasing rows: real documents read, routed by edu_score, chunked and rendered by
``plan_requests`` (timed in the row), then run with the faithfulness postprocess; each as achieved
requests/s over C/L, client CPU time per request (this process, which hosts the in-process
cluster or the LocalCluster's scheduler, plus the Dask worker processes) and the test server's CPU
time per request (it runs in its own process).

    .venv/bin/python bench/generate.py [--requests 1920] [--concurrency 64] [--latency 0.2] [--workers CORES-1] [--pairs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psutil


def serve(port_queue: multiprocessing.Queue, latency: float) -> None:
    from pipeline.llm.stub_server import StubServer

    srv = StubServer(latency_s=latency, responder=lambda messages, params: "A short answer. " * 8)
    port_queue.put(int(srv.base_url.rsplit(":", 1)[1].split("/")[0]))
    srv.serve_forever()


def bare_openai(base_url: str, n: int, concurrency: int) -> tuple[float, float, float]:
    import openai

    async def go() -> None:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                await client.chat.completions.create(model="stub-model", max_tokens=64,
                                                     messages=[{"role": "user", "content": f"q {i}"}])
        await asyncio.gather(*(one(i) for i in range(n)))
        await client.close()

    cpu, start = time.process_time(), time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - start, time.process_time() - cpu, 0.0


def rephrase_documents(path: Path, n: int) -> Path:
    """``n`` real documents (pydoc's topic pages, one chunk each) with edu scores spread over [0, 1]."""
    import json
    from pydoc_data.topics import topics

    texts = [t[:3000] for t in topics.values() if len(t) > 400]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"doc{i}", "text": texts[i % len(texts)], "edu_score": (i % 100) / 100}) + "\n")
    return path


def rephrase_prompts(n: int, base_url: str) -> pd.DataFrame:
    """The ``n`` rephrase requests ``plan_requests`` builds from the bench documents (planned untimed)."""
    from pipeline.config import load_config
    from pipeline.generate.plan import plan_requests

    with tempfile.TemporaryDirectory() as tmp:
        docs = rephrase_documents(Path(tmp) / "docs.jsonl", n)
        cfg = load_config(None, [f"generate.base_url={base_url}", "generate.model=stub-model", "generate.num_samples=0",
                                 f"run_dir={tmp}", f"generate.rephrase.input=[{docs}]"])
        return plan_requests(cfg.generate, cfg.seed, cfg.run_dir)[0]


def worker_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pipeline_run(base_url: str, n: int, concurrency: int, workers: int, rephrase: bool = False,
                 prompts: pd.DataFrame | None = None, in_process: bool = True) -> tuple[float, float, float]:
    """``run_requests`` as ``textbook generate`` runs it: ``in_process`` (workers=1, the default for a
    server: one in-process Dask worker) or on a warm process LocalCluster of ``workers`` (started,
    and its workers' imports paid, before timing). ``rephrase``: the requests are planned from
    documents (planning inside the timed wall); ``prompts``: the plain generate path, template rows
    planned (timed) and sent with these prompts' text, so both runs send the same bodies."""
    import contextlib
    import logging

    from distributed import Client, LocalCluster

    from pipeline.config import load_config
    from pipeline.generate.plan import plan_requests
    from pipeline.generate.rephrase import Faithfulness
    from pipeline.llm.run import run_requests
    from pipeline.llm.spec import RunSpec

    def bare(k: int, tag: str) -> pd.DataFrame:
        return pd.DataFrame({"id": [f"{tag}{i}" for i in range(k)],
                             "messages": [[{"role": "user", "content": f"q {tag} {i}"}] for i in range(k)]})

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        overrides = [f"generate.base_url={base_url}", "generate.model=stub-model", "generate.api_key=x",
                     "generate.max_tokens=64", f"generate.concurrency={concurrency}", f"run_dir={tmp}",
                     "generate.shard_size=100" if in_process else f"generate.shard_size={max(1, n // (2 * workers))}"]
        if in_process:
            where: dict = {"workers": 1}
            client = None
        else:
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None,
                                                       silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster))
            where = {"scheduler": cluster.scheduler_address}
        cfg = load_config(None, overrides)
        run_requests(RunSpec("warmup", Path(tmp) / "warm", Path(tmp), cfg.generate, **where), bare(2 * concurrency, "warm"))
        docs = rephrase_documents(Path(tmp) / "docs.jsonl", n) if rephrase else None  # the input, before timing
        before = sum(client.run(worker_cpu).values()) if client else 0.0
        cpu, start = time.process_time(), time.perf_counter()
        if rephrase:
            rcfg = load_config(None, [*overrides, "generate.num_samples=0", f"generate.rephrase.input=[{docs}]",
                                      "generate.rephrase.min_faithfulness=0.2"])
            planned, _ = plan_requests(rcfg.generate, rcfg.seed, rcfg.run_dir)
            assert len(planned) == n, len(planned)
            summary = run_requests(RunSpec("bench", Path(tmp) / "out", Path(tmp), rcfg.generate,
                                           postprocess=Faithfulness(0.2), **where), planned)
        elif prompts is not None:
            pcfg = load_config(None, [*overrides, f"generate.num_samples={n}"])
            planned, _ = plan_requests(pcfg.generate, pcfg.seed, pcfg.run_dir)
            texts = [m[-1]["content"] for m in prompts["messages"]]
            planned["messages"] = [[{"role": "user", "content": texts[i % len(texts)]}] for i in range(n)]
            planned["prompt"] = [texts[i % len(texts)] for i in range(n)]
            summary = run_requests(RunSpec("bench", Path(tmp) / "out", Path(tmp), cfg.generate, **where), planned)
        else:
            summary = run_requests(RunSpec("bench", Path(tmp) / "out", Path(tmp), cfg.generate, **where), bare(n, "r"))
        wall = time.perf_counter() - start
        driver = time.process_time() - cpu
        workers_cpu = sum(client.run(worker_cpu).values()) - before if client else 0.0
        assert summary.complete, summary
        latency = pd.concat([pd.read_parquet(f, columns=["latency_s"]) for f in (Path(tmp) / "out").glob("*.parquet")])
        print(f"run_requests latency per request (client-side): median {latency['latency_s'].median():.4f} s, "
              f"p90 {latency['latency_s'].quantile(0.9):.4f} s")
    return wall, driver + workers_cpu, driver


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1920)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    # the test server needs a core of its own: one more worker than the cores left only adds a
    # process competing for them (measured: 1 worker beats 2 on a 2-core machine)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="worker processes of the LocalCluster row")
    parser.add_argument("--pairs", type=int, default=1,
                        help="plain / rephrase runs, alternating, for the rephrasing overhead (each pair reported)")
    args = parser.parse_args()
    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(ports, args.latency), daemon=True)
    server.start()
    base_url = f"http://127.0.0.1:{ports.get(timeout=30)}/v1"
    ideal = args.concurrency / args.latency
    served = psutil.Process(server.pid)

    def measured(name: str, run: Callable[[], tuple[float, float, float]]) -> tuple:
        before = sum(served.cpu_times()[:2])
        return (name, *run(), sum(served.cpu_times()[:2]) - before)

    n, c = args.requests, args.concurrency
    rows = [("ideal C/L", n / ideal, 0.0, 0.0, 0.0)]
    rows.append(measured("bare asyncio + openai", lambda: bare_openai(base_url, n, c)))
    rows.append(measured("run_requests, in-process (default)", lambda: pipeline_run(base_url, n, c, 1)))
    rows.append(measured(f"run_requests, LocalCluster x{args.workers}",
                         lambda: pipeline_run(base_url, n, c, args.workers, in_process=False)))
    prompts = rephrase_prompts(n, base_url)
    pairs = []
    for _ in range(args.pairs):
        pairs.append((measured("plain rows, rephrase prompts' text",
                               lambda: pipeline_run(base_url, n, c, 1, prompts=prompts)),
                      measured("rephrase rows", lambda: pipeline_run(base_url, n, c, 1, rephrase=True))))
    rows.extend(pairs[0])
    server.terminate()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{n} requests, C={c}, L={args.latency}s, ideal {ideal:.0f} req/s; "
          f"{os.cpu_count()} cores, load average {load}")
    bare = n / rows[1][1]
    print(f"{'client':<36}{'wall s':>8}{'req/s':>8}{'/ ideal':>9}{'/ bare':>8}{'client CPU ms/req':>19}"
          f"{'(driver)':>10}{'server CPU ms/req':>19}")
    for name, wall, cpu, driver, server_cpu in rows:
        rate = n / wall
        print(f"{name:<36}{wall:>8.2f}{rate:>8.1f}{rate / ideal:>9.2f}{rate / bare:>8.2f}"
              f"{1000 * cpu / n:>19.2f}{1000 * driver / n:>10.2f}{1000 * server_cpu / n:>19.2f}")
    for k, (plain, rephrased) in enumerate(pairs):
        print(f"pair {k + 1}: rephrasing (read, route, chunk, render, faithfulness) costs "
              f"{100 * (rephrased[1] / plain[1] - 1):+.1f}% of the wall time of plain generate rows with the same "
              f"prompts' text ({plain[1]:.2f} s vs {rephrased[1]:.2f} s) and {1000 * (rephrased[2] - plain[2]) / n:+.2f} "
              "ms of client CPU a row (target: under 5% wall)")


if __name__ == "__main__":
    main()
