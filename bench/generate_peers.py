"""Generation against the tools users would pick instead, whole processes on the same server and prompts.

    .venv/bin/python bench/generate_peers.py                        # C = 64, L = 0.2 s, 1,920 requests
    .venv/bin/python bench/generate_peers.py --repeat 3 --tools textbook,loop

Every tool runs as its own process, timed from start to exit, against the project's test server
(``pipeline.llm.stub_server``, in a process of its own) at a fixed latency L per request, with
C requests in flight at most, max_tokens 64 and the SAME prompts: the ones ``textbook generate``
plans for ``configs/default.yaml`` with one request per row (the default template mix without
``conversation``, whose rows take two requests a turn). The peers read them from a file:

- ``textbook``: ``textbook generate -c configs/default.yaml`` (``workers`` = ``--workers``), the
  config's rate and cost caps lifted like every peer's;
- ``curator``: bespoke curator's ``curator.LLM`` on its OpenAI backend (``max_concurrent_requests``
  C, rate limits far above the server's), a fresh cache folder per run so nothing is reused;
- ``distilabel``: a ``Pipeline`` of ``LoadDataFromDicts`` and ``TextGeneration`` with ``OpenAILLM``
  (batches of C, ``use_cache=False``, a fresh cache folder);
- ``loop``: a hand-written ``AsyncOpenAI`` + ``asyncio.Semaphore(C)`` loop writing JSONL, run with
  the project's environment (the newest ``openai``; the peers' environment holds the older one that
  litellm allows, whose connection pool scans its connections on every request: 640 requests took
  17.5 s from first request to last answer with it, 4.1 s with the newest).

The peers are installed by this script, never into the project, each into its own environment as a
user installing it alone would get it: curator into ``bench/.venv-genpeers`` (its litellm pins
openai 2.30), distilabel into ``bench/.venv-genpeers-distilabel`` (the newest openai); both pinned to
the versions the issue measured. Each tool writes its rows to disk; the server answers
every prompt in fewer than 64 words (``finish_reason`` stop), so no tool retries a cut answer.

Columns, per tool and run: whole-process seconds; the first request, first answer and last answer
as the server saw them, in seconds after the process started; the tail (from the last answer to
the process's exit: the last rows, manifests, reports, shutdown); the rate while requests ran (answers
over the time from the first request to the last answer, as a share of C/L; 1.0 is ideal); the
whole process against the ideal N*L/C; client CPU per request (user + system of the process tree:
the larger of the reaped-children rusage and psutil's per-process sum); rows written; whether the
server saw exactly the planned prompts, each once per row; the peak of requests in flight; the
machine's 1-minute load average before the run; and seconds against textbook's in the same
repetition (> 1: slower than textbook).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEER_ENVS = {  # one environment each, as a user installs it: litellm (under curator) pins an older openai
    "curator": (ROOT / "bench" / ".venv-genpeers", ["bespokelabs-curator==0.1.31", "psutil"],
                "import bespokelabs.curator"),
    # distilabel 1.5.3 imports requests (in models/image_generation) without declaring it
    "distilabel": (ROOT / "bench" / ".venv-genpeers-distilabel", ["distilabel[openai]==1.5.3", "requests", "psutil"],
                   "import distilabel.models, openai"),
}
TOOLS = ("textbook", "curator", "distilabel", "loop")
MODEL, API_KEY = "stub-model", "sk-bench-dummy"
ONE_REQUEST_A_ROW = "{textbook: 0.35, exercises: 0.2, story: 0.15, wikihow: 0.15}"


# --- the server, in its own process -----------------------------------------------------------

SERVER = """
import hashlib, json, sys, time
from pipeline.llm.stub_server import StubServer, textbook_responder

answers = []
def responder(messages, params):  # called once the latency has passed: the answer's time
    answers.append(time.time())
    return " ".join(textbook_responder(messages, params).split()[:48])  # < max_tokens: finish_reason stop

srv = StubServer(responder=responder, latency_s=float(sys.argv[1])).start()
print(srv.base_url, flush=True)
for line in sys.stdin:  # "dump PATH": this tool's requests since the last dump, then forget them
    path = line.split(" ", 1)[1].strip()
    done, srv.requests[:] = list(srv.requests), []
    got, answers[:] = list(answers), []
    json.dump({"arrivals": [r["time"] for r in done], "statuses": [r["status"] for r in done],
               "prompts": [hashlib.sha256(r["messages"][-1]["content"].encode()).hexdigest() for r in done],
               "answers": got, "max_in_flight": srv.max_in_flight}, open(path, "w"))
    srv.max_in_flight = 0
    print("ok", flush=True)
"""


class Server:
    """The test server in a child process; ``dump()`` returns and forgets what it saw since the last one."""

    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "python"), "-c", SERVER, str(latency)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.base_url = self.proc.stdout.readline().strip()

    def dump(self, path: Path) -> dict:
        self.proc.stdin.write(f"dump {path}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"
        return json.loads(path.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


# --- the peers --------------------------------------------------------------------------------

LOOP = """
import asyncio, json, sys
from openai import AsyncOpenAI
base_url, key, model, prompts_file, out, c, max_tokens = sys.argv[1:8]
prompts = json.load(open(prompts_file))

async def main():
    client = AsyncOpenAI(base_url=base_url, api_key=key)
    gate = asyncio.Semaphore(int(c))
    async def one(prompt):
        async with gate:
            r = await client.chat.completions.create(model=model, max_tokens=int(max_tokens), temperature=0.8,
                                                     messages=[{"role": "user", "content": prompt}])
            return {"prompt": prompt, "text": r.choices[0].message.content}
    rows = await asyncio.gather(*(one(p) for p in prompts))
    with open(out, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\\n")
    await client.close()

asyncio.run(main())
"""

CURATOR = """
import json, sys
import tiktoken
base_url, key, model, prompts_file, out, c, max_tokens = sys.argv[1:8]
import hashlib, os, tempfile
url = b"https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "data-gym-cache")
if not os.path.exists(os.path.join(cache, hashlib.sha1(url).hexdigest())):
    # offline: curator counts tokens with cl100k_base, which tiktoken downloads; a byte-level stand-in
    _bytes = tiktoken.Encoding(name="bytes", pat_str=r"\\S+|\\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                               special_tokens={})
    tiktoken.get_encoding = lambda name: _bytes
    print("curator: cl100k_base unavailable offline, counting tokens byte-level", file=sys.stderr)
from bespokelabs import curator
from datasets import Dataset

class Generate(curator.LLM):
    def prompt(self, row):
        return row["prompt"]
    def parse(self, row, response):
        return {"prompt": row["prompt"], "text": response}

llm = Generate(model_name=model, backend="openai",
               generation_params={"max_tokens": int(max_tokens), "temperature": 0.8},
               backend_params={"base_url": base_url, "api_key": key, "max_concurrent_requests": int(c),
                               "max_requests_per_minute": 10_000_000, "max_tokens_per_minute": 10_000_000_000,
                               "require_all_responses": True})
result = llm(Dataset.from_list([{"prompt": p} for p in json.load(open(prompts_file))]))
dataset = getattr(result, "dataset", result)
dataset.to_json(out)
"""

DISTILABEL = """
import json, sys
base_url, key, model, prompts_file, out, c, max_tokens, cache = sys.argv[1:9]
from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration

prompts = json.load(open(prompts_file))
with Pipeline(name="bench-generate", cache_dir=cache) as pipeline:
    load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=int(c))
    generate = TextGeneration(llm=OpenAILLM(model=model, base_url=base_url, api_key=key),
                              input_batch_size=int(c))
    load >> generate
if __name__ == "__main__":
    distiset = pipeline.run(use_cache=False, parameters={generate.name: {"llm": {"generation_kwargs": {
        "max_new_tokens": int(max_tokens), "temperature": 0.8}}}})
    distiset["default"]["train"].to_json(out)
"""


def ensure_peer(tool: str) -> Path:
    """The Python of ``tool``'s own environment, installed on first use."""
    venv, packages, probe = PEER_ENVS[tool]
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"installing {tool} into {venv} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if subprocess.run([str(python), "-c", probe], capture_output=True).returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    return python


# --- measuring a whole process ----------------------------------------------------------------

def run_measured(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, float]:
    """(start time, wall seconds, CPU seconds of the process tree) of ``cmd``; raises on a non-zero exit.

    CPU: the larger of the rusage of the child and the descendants it reaped, and psutil's sum of
    each process's own user + system time, last seen every 0.1 s (catches descendants nobody reaped).
    """
    with open(log, "w") as out:
        start = time.time()
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}  # every tool gets its URL and key
        proc = subprocess.Popen(cmd, env={**inherited, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    root = psutil.Process(proc.pid)
    seen: dict[int, float] = {}
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            for p in [root, *root.children(recursive=True)]:
                with p.oneshot():
                    t = p.cpu_times()
                    seen[p.pid] = t.user + t.system
        except psutil.Error:
            pass
        time.sleep(0.1)
    seconds = time.time() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    return start, seconds, max(usage.ru_utime + usage.ru_stime, sum(seen.values()))


def versions(pythons: dict[str, Path]) -> str:
    """The tools' versions, as this run uses them."""
    def probe(py: Path, *packages: str) -> str:
        code = f"from importlib.metadata import version as v; print(', '.join(p + ' ' + v(p) for p in {packages!r}))"
        return subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout.strip()

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    parts = [f"textbook {sha}{' + uncommitted changes' if dirty else ''}"]
    parts += [f"{tool}: {probe(py, *packages)}" for tool, py, packages in (
        ("loop", pythons["loop"], ("openai",)), ("curator", pythons.get("curator"), ("bespokelabs-curator", "openai")),
        ("distilabel", pythons.get("distilabel"), ("distilabel", "openai"))) if py]
    return "; ".join(parts)


def plan_prompts(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The prompts ``textbook generate`` plans for this run's config, in row order."""
    from pipeline.config import load_config
    from pipeline.generate.plan import plan_requests

    cfg = load_config(ROOT / "configs" / "default.yaml", textbook_overrides(args, "http://127.0.0.1:9/v1", run_dir))
    return plan_requests(cfg.generate, cfg.seed, cfg.run_dir)[0]["prompt"].tolist()


def textbook_overrides(args: argparse.Namespace, base_url: str, run_dir: Path) -> list[str]:
    return [f"run_dir={run_dir}", f"workers={args.workers}", "generate.backend=openai",
            f"generate.base_url={base_url}", f"generate.api_key={API_KEY}", f"generate.model={MODEL}",
            f"generate.num_samples={args.requests}", f"generate.concurrency={args.concurrency}",
            f"generate.max_tokens={args.max_tokens}", f"generate.templates={ONE_REQUEST_A_ROW}",
            "generate.requests_per_minute=null", "generate.tokens_per_minute=null", "generate.max_cost_usd=null"]


def run_tool(tool: str, args: argparse.Namespace, server: Server, prompts_file: Path, work: Path,
             python: Path) -> dict:
    out = work / "out.jsonl"
    env = {"HF_HUB_OFFLINE": "1", "TELEMETRY_ENABLED": "false", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "CURATOR_CACHE_DIR": str(work / "curator-cache"), "CURATOR_DISABLE_RICH_DISPLAY": "1",
           "DISTILABEL_CACHE_DIR": str(work / "distilabel-cache"), "TEXTBOOK_PROGRESS_S": "3600"}
    common = [server.base_url, API_KEY, MODEL, str(prompts_file), str(out), str(args.concurrency), str(args.max_tokens)]
    if tool == "textbook":
        cmd = [str(ROOT / ".venv" / "bin" / "textbook"), "generate", "-c", str(ROOT / "configs" / "default.yaml"),
               *textbook_overrides(args, server.base_url, work / "run")]
    else:
        code = {"curator": CURATOR, "distilabel": DISTILABEL, "loop": LOOP}[tool]
        script = work / f"run_{tool}.py"  # a file, not -c: distilabel's pipeline starts processes that import it
        script.write_text(textwrap.dedent(code))
        cmd = [str(python), str(script), *common, *([str(work / "distilabel-cache")] if tool == "distilabel" else [])]
    load = os.getloadavg()[0]  # the machine's 1-minute load before the run: context for a noisy number
    start, seconds, cpu = run_measured(cmd, env, work / f"{tool}.log")
    seen = server.dump(work / "server.json")
    notes = [line for line in (work / f"{tool}.log").read_text().splitlines() if "byte-level" in line]
    return {"start": start, "seconds": seconds, "cpu": cpu, "load": load, "seen": seen, "rows": count_rows(tool, work, out),
            "notes": notes[:1]}


def count_rows(tool: str, work: Path, out: Path) -> int:
    if tool == "textbook":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(p).metadata.num_rows for p in (work / "run" / "generated").glob("part-*.parquet"))
    return sum(1 for line in out.read_text().splitlines() if line.strip()) if out.exists() else 0


def row(tool: str, rep: int, r: dict, args: argparse.Namespace, planned: Counter[str]) -> dict:
    seen = r["seen"]
    ok = [t for t, s in zip(seen["arrivals"], seen["statuses"], strict=True) if s == 200]
    first_req, last_answer = min(seen["arrivals"]), max(seen["answers"])
    ideal_rate = args.concurrency / args.latency
    answered = Counter(p for p, s in zip(seen["prompts"], seen["statuses"], strict=True) if s == 200)
    return {"tool": tool, "run": rep, "seconds": r["seconds"],
            "first_request": first_req - r["start"], "first_answer": min(seen["answers"]) - r["start"],
            "last_answer": last_answer - r["start"], "tail": r["start"] + r["seconds"] - last_answer,
            "rate": len(ok) / (last_answer - first_req) / ideal_rate,
            "of_ideal": args.requests * args.latency / args.concurrency / r["seconds"],
            "cpu_ms": 1000 * r["cpu"] / max(1, len(seen["arrivals"])), "requests": len(seen["arrivals"]),
            "rows": r["rows"], "same_prompts": answered == planned, "max_in_flight": seen["max_in_flight"],
            "notes": r["notes"], "load": r["load"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1920)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1, help="textbook's Dask workers")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--keep", type=Path, help="a new folder to write each run's logs, outputs and server log to, and keep")
    args = ap.parse_args()
    tools = [t.strip() for t in args.tools.split(",")]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        sys.exit(f"--tools: unknown {sorted(unknown)} (known: {', '.join(TOOLS)})")
    pythons = {tool: ensure_peer(tool) for tool in tools if tool in PEER_ENVS}
    pythons["loop"] = ROOT / ".venv" / "bin" / "python"
    print(versions(pythons), flush=True)
    results: list[dict] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="generate_peers_") as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        prompts = plan_prompts(args, Path(tmp) / "plan")
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(prompts))
        planned = Counter(hashlib.sha256(p.encode()).hexdigest() for p in prompts)
        print(f"{len(prompts):,} prompts ({len(planned):,} distinct) from textbook's plan; C={args.concurrency}, "
              f"L={args.latency}s, max_tokens={args.max_tokens}; ideal {args.requests * args.latency / args.concurrency:.1f} s",
              flush=True)
        server = Server(args.latency)
        try:
            for rep in range(1, args.repeat + 1):
                for tool in tools:
                    work = Path(tmp) / f"{tool}-{rep}"
                    work.mkdir()
                    try:
                        measured = run_tool(tool, args, server, prompts_file, work, pythons.get(tool, pythons["loop"]))
                    except RuntimeError as e:  # one tool failing must not lose the other tools' runs
                        server.dump(work / "server.json")
                        failures.append(f"{tool} run {rep}: {e}")
                        print(f"  {tool} run {rep} FAILED: {str(e).splitlines()[0]}", flush=True)
                        continue
                    r = row(tool, rep, measured, args, planned)
                    results.append(r)
                    print(f"  {tool} run {rep}: {r['seconds']:.1f} s, first request at {r['first_request']:.2f} s, "
                          f"tail {r['tail']:.2f} s, "
                          f"rate {r['rate']:.2f} of C/L, {r['cpu_ms']:.1f} ms CPU/request, {r['rows']} rows"
                          + "".join(f"; {n}" for n in r["notes"]), flush=True)
        finally:
            server.close()
    print_table(results, tools)
    if failures:
        print("\nfailed runs:\n" + "\n\n".join(failures), file=sys.stderr)
        sys.exit(1)


def print_table(results: list[dict], tools: list[str]) -> None:
    base = {r["run"]: r["seconds"] for r in results if r["tool"] == "textbook"}
    head = ("tool", "run", "whole s", "1st req s", "1st ans s", "last ans s", "tail s", "rate/(C/L)", "whole/ideal",
            "CPU ms/req", "requests", "rows", "same prompts", "peak in flight", "load before", "s vs textbook")
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in results:
        ratio = f"{r['seconds'] / base[r['run']]:.2f}" if r["run"] in base else "-"
        print(f"| {r['tool']} | {r['run']} | {r['seconds']:.1f} | {r['first_request']:.2f} | {r['first_answer']:.2f} | "
              f"{r['last_answer']:.1f} | {r['tail']:.2f} | {r['rate']:.2f} | {r['of_ideal']:.2f} | {r['cpu_ms']:.2f} | {r['requests']} | "
              f"{r['rows']} | {'yes' if r['same_prompts'] else 'NO'} | {r['max_in_flight']} | {r['load']:.1f} | {ratio} |")
    print("\nmedian per tool (all runs):")
    for tool in tools:
        mine = [r for r in results if r["tool"] == tool]
        if mine:
            med = {k: statistics.median(r[k] for r in mine) for k in ("seconds", "first_request", "tail", "rate", "cpu_ms")}
            print(f"  {tool}: {med['seconds']:.1f} s whole, first request {med['first_request']:.2f} s, tail {med['tail']:.2f} s, "
                  f"rate {med['rate']:.2f} of C/L, {med['cpu_ms']:.2f} ms CPU/request")


if __name__ == "__main__":
    main()
