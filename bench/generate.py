"""Benchmark: generate throughput against a local OpenAI-compatible server with fixed latency.

With latency L per request and C requests in flight, the ideal rate is C/L. The table compares
(1) a bare asyncio + openai loop (the floor any client pays), (2) the pipeline's run_requests on
a LocalCluster (shards, cluster-wide semaphore, ledger actor, journal, Parquet) and (3) the same
requests as rephrasing rows: real documents read, routed by edu_score, chunked and rendered by
``plan_requests`` (timed in the row), then run with the faithfulness postprocess; each as achieved
requests/s over C/L, client CPU time per request (driver, which hosts the LocalCluster's
scheduler, plus Dask workers) and the test server's CPU time per request (it runs in its own process).

    .venv/bin/python bench/generate.py [--requests 1920] [--concurrency 64] [--latency 0.2] [--workers CORES-1]
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
    from pipeline.generate.stub_server import StubServer

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
        return plan_requests(cfg)[0]


def pipeline_run(base_url: str, n: int, concurrency: int, workers: int, rephrase: bool = False,
                 prompts: pd.DataFrame | None = None) -> tuple[float, float, float]:
    """run_requests on a warm LocalCluster (started, and its workers' imports paid, before timing);
    ``rephrase``: the requests are planned from documents (planning inside the timed wall);
    ``prompts``: plain requests with these prompts' text, so both runs send the same bodies."""
    import logging

    from distributed import Client, LocalCluster

    from pipeline.config import load_config
    from pipeline.generate.runner import run_requests

    def requests(k: int, tag: str) -> pd.DataFrame:
        # the rephrase prompts' text (without their planning) when comparing against rephrasing
        texts = [m[-1]["content"] for m in prompts["messages"]] if prompts is not None else None
        return pd.DataFrame({"id": [f"{tag}{i}" for i in range(k)],
                             "messages": [[{"role": "user", "content": texts[i % len(texts)] if texts else f"q {tag} {i}"}]
                                          for i in range(k)]})

    def worker_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client, \
            tempfile.TemporaryDirectory() as tmp:
        overrides = [f"generate.base_url={base_url}", "generate.model=stub-model",
                     "generate.max_tokens=64", f"generate.concurrency={concurrency}",
                     f"generate.shard_size={max(1, n // (2 * workers))}"]
        cfg = load_config(None, overrides)
        where = {"run_dir": tmp, "scheduler": cluster.scheduler_address}
        run_requests(cfg.generate, requests(2 * concurrency, "warm"), Path(tmp) / "warm", stage="warmup", **where)
        before = sum(client.run(worker_cpu).values())
        cpu, start = time.process_time(), time.perf_counter()
        if rephrase:
            from pipeline.generate.plan import plan_requests
            from pipeline.generate.rephrase import Faithfulness

            docs = rephrase_documents(Path(tmp) / "docs.jsonl", n)
            rcfg = load_config(None, [*overrides, "generate.num_samples=0", f"run_dir={tmp}",
                                      f"generate.rephrase.input=[{docs}]", "generate.rephrase.min_faithfulness=0.2"])
            planned, _ = plan_requests(rcfg)
            assert len(planned) == n, len(planned)
            summary = run_requests(rcfg.generate, planned, Path(tmp) / "out", stage="bench",
                                   postprocess=Faithfulness(0.2), **where)
        else:
            if prompts is not None:  # the plain path plans as many template rows as it sends
                from pipeline.generate.plan import plan_requests

                plan_requests(load_config(None, [*overrides, f"generate.num_samples={n}", f"run_dir={tmp}"]))
            summary = run_requests(cfg.generate, requests(n, "r"), Path(tmp) / "out", stage="bench", **where)
        wall = time.perf_counter() - start
        driver = time.process_time() - cpu
        workers_cpu = sum(client.run(worker_cpu).values()) - before
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
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
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

    rows = [("ideal C/L", args.requests / ideal, 0.0, 0.0, 0.0)]
    rows.append(measured("bare asyncio + openai", lambda: bare_openai(base_url, args.requests, args.concurrency)))
    rows.append(measured(f"run_requests, LocalCluster x{args.workers}",
                         lambda: pipeline_run(base_url, args.requests, args.concurrency, args.workers)))
    prompts = rephrase_prompts(args.requests, base_url)
    rows.append(measured("plan + the rephrase prompts' text",
                         lambda: pipeline_run(base_url, args.requests, args.concurrency, args.workers, prompts=prompts)))
    rows.append(measured(f"rephrase rows, LocalCluster x{args.workers}",
                         lambda: pipeline_run(base_url, args.requests, args.concurrency, args.workers, rephrase=True)))
    server.terminate()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{args.requests} requests, C={args.concurrency}, L={args.latency}s, ideal {ideal:.0f} req/s; "
          f"{os.cpu_count()} cores, load average {load}")
    bare = args.requests / rows[1][1]
    print(f"{'client':<32}{'wall s':>8}{'req/s':>8}{'/ ideal':>9}{'/ bare':>8}{'client CPU ms/req':>19}"
          f"{'(driver)':>10}{'server CPU ms/req':>19}")
    for name, wall, cpu, driver, server_cpu in rows:
        rate = args.requests / wall
        print(f"{name:<32}{wall:>8.2f}{rate:>8.1f}{rate / ideal:>9.2f}{rate / bare:>8.2f}"
              f"{1000 * cpu / args.requests:>19.2f}{1000 * driver / args.requests:>10.2f}"
              f"{1000 * server_cpu / args.requests:>19.2f}")
    plain, rephrased = rows[3][1], rows[4][1]
    print(f"rephrasing (read, route, chunk, render, faithfulness) costs {100 * (rephrased / plain - 1):+.1f}% "
          "of the wall time of plain requests with the same prompts (target: under 5%)")


if __name__ == "__main__":
    main()
