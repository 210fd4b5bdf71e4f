"""Model backends behind one async interface (:class:`Backend`), chosen by :func:`open_backend`:
any OpenAI-compatible server (async, retried) or in-process transformers (batched).

Both return ``Completion`` records; neither knows about shards, journals or Dask. Fatal answers
(401/403/404/400) raise ``GenerateError`` at once with a one-line cause; transient ones (429, 5xx,
timeouts, dropped connections) are retried with exponential backoff and jitter, honouring Retry-After.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.cluster import close_at_exit, worker_cached
from pipeline.errors import GenerateError
from pipeline.generate.config import GenerateConfig

Messages = list[dict[str, str]]
_BACKOFF_CAP_S = 30.0
_RETRY_AFTER_CAP_S = 300.0


@dataclass
class Completion:
    """One model answer with what it cost and how long it took."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


@dataclass(frozen=True)
class Sampling:
    """What every request asks for: the completion budget and the decoding (recorded on each row)."""

    max_tokens: int
    temperature: float
    top_p: float

    @classmethod
    def of(cls, cfg: GenerateConfig) -> Sampling:
        """The ``generate`` section's sampling."""
        return cls(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p)


class Backend(Protocol):
    """A model that completes chat requests, ``batch_size`` conversations per call.

    ``remote``: the requests go to a server, so the run's cluster-wide concurrency lease and rate
    limits apply and up to ``concurrency`` calls of one shard are in flight at once; an in-process
    model runs one call at a time. ``seed`` makes a batch's sampling reproducible where the backend
    can (in-process); a server's sampling is its own.
    """

    batch_size: int
    concurrency: int
    remote: bool

    async def complete(self, batch: list[Messages], params: Sampling, seed: int) -> list[Completion]: ...

    async def close(self) -> None: ...


def open_backend(cfg: GenerateConfig) -> Backend:
    """This worker's backend for ``cfg`` (``generate.backend``): built once, reused by every shard."""
    if cfg.backend == "transformers":
        return worker_cached(("transformers", cfg.model, cfg.device, cfg.batch_size), lambda: _load_quietly(cfg))
    return OpenAIBackend(cfg, shared_openai_client(cfg))


def resolve_endpoint(cfg: GenerateConfig) -> tuple[str | None, str]:
    """(base_url, api_key) from the config, else OPENAI_BASE_URL / OPENAI_API_KEY."""
    base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = cfg.api_key.get_secret_value() if cfg.api_key else os.environ.get("OPENAI_API_KEY")
    if not key:
        if base_url is None:
            raise GenerateError("no API key for the OpenAI API: set OPENAI_API_KEY or generate.api_key "
                                "(or point generate.base_url at a local server)")
        key = "EMPTY"  # local servers (vLLM, llama.cpp, Ollama) accept any key
    return base_url, key


def openai_client(cfg: GenerateConfig) -> Any:
    """An ``openai.AsyncOpenAI`` with the SDK's retries off and one kept-alive connection per slot."""
    import httpx2  # the openai SDK's HTTP client
    import openai

    base_url, key = resolve_endpoint(cfg)
    # the SDK's default pool keeps 100 connections, so a wider run would close and reopen them on
    # every burst
    pool = httpx2.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    # loading the CA bundle costs ~50 ms: once per worker process, not once per shard
    tls = worker_cached(("ssl-context",), httpx2.create_ssl_context)
    # the SDK's aiohttp transport does the same requests for less CPU than its default httpx:
    # at C=64 the client's CPU, not the server, is what keeps a run below C/latency
    transport = openai.DefaultAioHttpClient if cfg.http_client == "aiohttp" else openai.DefaultAsyncHttpxClient
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=cfg.request_timeout_s,
                              http_client=transport(limits=pool, verify=tls))


def shared_openai_client(cfg: GenerateConfig) -> Any:
    """This worker's client for ``cfg``'s endpoint, reused by every shard on its event loop."""
    def build() -> Any:
        client = openai_client(cfg)
        close_at_exit(client.close)
        return client

    base_url, key = resolve_endpoint(cfg)
    return worker_cached(("openai-client", base_url, key, cfg.http_client, cfg.concurrency,
                          cfg.request_timeout_s), build)


class OpenAIBackend:
    """Chat completions against an OpenAI-compatible server; the SDK's own retries are off."""

    batch_size = 1  # the server batches; the shard keeps ``concurrency`` requests in flight
    remote = True

    def __init__(self, cfg: GenerateConfig, client: Any | None = None) -> None:
        self.cfg = cfg
        self.concurrency = cfg.concurrency
        self.where = resolve_endpoint(cfg)[0] or "api.openai.com"
        self.client = client if client is not None else openai_client(cfg)

    async def complete(self, batch: list[Messages], params: Sampling, seed: int = 0) -> list[Completion]:
        if len(batch) == 1:
            return [await self.complete_one(batch[0], params)]
        return list(await asyncio.gather(*(self.complete_one(m, params) for m in batch)))

    async def complete_one(self, messages: Messages, params: Sampling) -> Completion:
        """One chat completion, retried on transient failures."""
        import openai

        cfg = self.cfg
        last = ""
        for attempt in range(cfg.max_retries + 1):
            start = time.perf_counter()
            try:
                # the SDK's low-level ``post`` (its documented way to custom requests): same client,
                # headers, errors and timeouts, without the per-request walk of the typed-params
                # transform and the response-model build, which cost more CPU than the HTTP itself
                raw = await self.client.post("/chat/completions", body={
                    "model": cfg.model, "messages": messages, "temperature": params.temperature,
                    "top_p": params.top_p, "max_tokens": params.max_tokens}, cast_to=bytes)
            except openai.APIStatusError as e:
                fatal = self._fatal(e)
                if fatal:
                    raise GenerateError(fatal) from None
                last = f"HTTP {e.status_code}"
                wait = retry_after(e.response.headers) or self._backoff(attempt)
            except openai.APIConnectionError as e:  # includes APITimeoutError
                last = transport_failure(e)
                wait = self._backoff(attempt)
            else:
                return _completion(raw, time.perf_counter() - start, self.where)
            if attempt < cfg.max_retries:
                await asyncio.sleep(wait)
        attempts = cfg.max_retries + 1
        raise GenerateError(f"{self.where}: giving up after {attempts} attempt{'s' * (attempts > 1)} "
                            f"(last: {last}); completed rows are kept, rerun to resume")

    def _fatal(self, e: Any) -> str | None:
        status, model, where = e.status_code, self.cfg.model, self.where
        if status == 401:
            return f"{where}: 401 Unauthorized: wrong API key (check generate.api_key or OPENAI_API_KEY)"
        if status == 403:
            return f"{where}: 403 Forbidden: this API key may not use model '{model}'"
        if status == 404:
            return f"{where}: 404 Not Found: unknown model '{model}' (check generate.model and generate.base_url)"
        if status in (400, 413, 422):
            detail = str(getattr(e, "message", "") or "").splitlines()[:1]
            return f"{where}: {status} bad request for model '{model}': {' '.join(detail)}"
        return None

    def _backoff(self, attempt: int) -> float:
        ceiling = min(_BACKOFF_CAP_S, self.cfg.retry_backoff_s * 2**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # equal jitter: spread, but never ~0

    async def close(self) -> None:
        await self.client.close()


def retry_after(headers: Any) -> float | None:
    """Seconds a server asked us to wait (``retry-after-ms``, ``Retry-After`` seconds or HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return min(_RETRY_AFTER_CAP_S, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return min(_RETRY_AFTER_CAP_S, max(0.0, float(value)))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        if when is None:
            return None
        return min(_RETRY_AFTER_CAP_S, max(0.0, when.timestamp() - time.time()))


def transport_failure(e: BaseException) -> str:
    """'timeout' or 'connection error (cause)' for a failed request, from its innermost cause.

    The SDK's own message is a bare "Connection error."; and the aiohttp transport maps a refused
    connection to a connect *timeout*, so the exception's type alone would mislead.
    """
    import openai

    chain = [e]
    while chain[-1].__cause__ is not None and len(chain) < 16:
        chain.append(chain[-1].__cause__)
    root = chain[-1]
    if isinstance(root, OSError) and not isinstance(root, TimeoutError):
        return f"connection error ({root})"
    if isinstance(e, openai.APITimeoutError) or any(isinstance(x, TimeoutError) for x in chain):
        return "timeout"
    return f"connection error ({e.__cause__ or e})"


def _completion(raw: bytes, latency: float, where: str) -> Completion:
    """A ``Completion`` from the JSON body of a chat completion."""
    try:
        body = json.loads(raw)
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return Completion(text=choice["message"].get("content") or "",
                          finish_reason=choice.get("finish_reason"),
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0),
                          latency_s=round(latency, 4))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise GenerateError(f"{where}: not a chat completion answer ({type(e).__name__}: {e}): "
                            f"{raw[:120]!r}") from None


class TransformersBackend:
    """In-process batched generation: a Hub id or local path, its chat template, left padding."""

    concurrency = 1  # one forward pass at a time: a second would only compete for the same device
    remote = False

    def __init__(self, model: str, device: str | None = None, batch_size: int = 8) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model)
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise GenerateError(f"generate.model '{model}': cannot load with transformers ({first})") from None
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _prompt(self, messages: Messages) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    async def complete(self, batch: list[Messages], params: Sampling, seed: int) -> list[Completion]:
        """Generate for a batch of conversations; ``seed`` makes sampling reproducible."""
        # off the event loop: a forward pass blocks for as long as it computes
        return await asyncio.to_thread(self._generate, batch, params, seed)

    async def close(self) -> None:
        return None  # the weights live as long as the worker, for its next shard

    def _generate(self, batch: list[Messages], params: Sampling, seed: int) -> list[Completion]:
        import torch

        tok = self.tokenizer
        start = time.perf_counter()
        enc = tok([self._prompt(m) for m in batch], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(self.device)
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p} \
            if params.temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=params.max_tokens, pad_token_id=tok.pad_token_id,
                                      **sampling)
        latency = (time.perf_counter() - start) / len(batch)
        eos = {tok.eos_token_id, *([self.model.generation_config.eos_token_id]
                                   if isinstance(self.model.generation_config.eos_token_id, int)
                                   else self.model.generation_config.eos_token_id or [])}
        results = []
        for row, mask in zip(out[:, enc["input_ids"].shape[1]:].tolist(), enc["attention_mask"], strict=True):
            stop = next((i for i, t in enumerate(row) if t in eos), None)
            kept = row if stop is None else row[:stop]
            results.append(Completion(
                text=tok.decode(kept, skip_special_tokens=True).strip(),
                finish_reason="stop" if stop is not None else "length",
                prompt_tokens=int(mask.sum()), completion_tokens=len(kept) + (stop is not None),
                latency_s=round(latency, 4)))
        return results


def _load_quietly(cfg: GenerateConfig) -> TransformersBackend:
    """Load the model on a worker without its progress bars and info messages.

    A worker's stderr is the driver's terminal: its "Loading weights" bars and per-batch notices would
    be drawn over the run's own progress bar (and flood a log with carriage-return frames). Errors
    still reach the driver, as the task's exception.
    """
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return TransformersBackend(cfg.model, cfg.device, cfg.batch_size)
