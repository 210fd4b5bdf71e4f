"""Model backends, all built by :func:`open_backend`: behind one async interface (:class:`Backend`)
any OpenAI-compatible server (async, retried) or in-process transformers (batched); and a server's
Batch API (:class:`BatchAPI`) for ``generate.mode: batch``.

They return ``Completion`` records; none knows about shards, journals or Dask. Fatal answers
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
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal, Protocol, overload

from pipeline.cluster import close_at_exit, worker_cached
from pipeline.errors import GenerateError
from pipeline.llm.config import LLMConfig

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
    repetition_penalty: float | None = None

    @classmethod
    def of(cls, cfg: LLMConfig) -> Sampling:
        """The section's sampling."""
        return cls(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                   repetition_penalty=cfg.repetition_penalty)

    def body(self) -> dict[str, Any]:
        """The request body's sampling fields (a server that does not know an unset one never sees it)."""
        fields = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        return fields if self.repetition_penalty is None else {**fields, "repetition_penalty": self.repetition_penalty}


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


@overload
def open_backend(cfg: LLMConfig, batch: Literal[False] = False) -> Backend: ...


@overload
def open_backend(cfg: LLMConfig, batch: Literal[True]) -> BatchAPI: ...


def open_backend(cfg: LLMConfig, batch: bool = False) -> Backend | BatchAPI:
    """The backend ``cfg`` names (``generate.backend``): for online requests, this worker's, built once
    and reused by every shard; with ``batch``, the server's Batch API (``generate.mode: batch``)."""
    if batch:
        if cfg.backend != "openai":
            raise GenerateError("generate.mode=batch needs generate.backend=openai (a server with /v1/batches)")
        return BatchAPI(cfg)
    if cfg.backend == "transformers":
        return worker_cached(("transformers", cfg.model, cfg.device, cfg.batch_size), lambda: load_quietly(cfg))
    return OpenAIBackend(cfg, shared_openai_client(cfg))


def base_url_of(cfg: LLMConfig) -> str | None:
    """The endpoint from the config, else OPENAI_BASE_URL (None: the OpenAI API)."""
    return cfg.base_url or os.environ.get("OPENAI_BASE_URL") or None


def resolve_endpoint(cfg: LLMConfig) -> tuple[str | None, str]:
    """(base_url, api_key) from the config, else OPENAI_BASE_URL / OPENAI_API_KEY."""
    base_url = base_url_of(cfg)
    key = cfg.api_key.get_secret_value() if cfg.api_key else os.environ.get("OPENAI_API_KEY")
    if not key:
        if base_url is None:
            raise GenerateError("no API key for the OpenAI API: set OPENAI_API_KEY or generate.api_key "
                                "(or point generate.base_url at a local server)")
        key = "EMPTY"  # local servers (vLLM, llama.cpp, Ollama) accept any key
    return base_url, key


def openai_client(cfg: LLMConfig) -> Any:
    """This endpoint's HTTP client for chat completions (``generate.http_client``), one kept-alive
    connection per slot: :class:`AioHttpChat` (default) or the openai SDK over httpx."""
    if cfg.http_client == "aiohttp":
        return AioHttpChat(cfg)
    import httpx2  # the openai SDK's HTTP client
    import openai

    base_url, key = resolve_endpoint(cfg)
    # the SDK's default pool keeps 100 connections, so a wider run would close and reopen them on
    # every burst
    pool = httpx2.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    # the CA bundle is loaded once per worker process, not once per shard
    tls = worker_cached(("ssl-context", "httpx"), httpx2.create_ssl_context)
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=cfg.request_timeout_s,
                              http_client=openai.DefaultAsyncHttpxClient(limits=pool, verify=tls))


def shared_openai_client(cfg: LLMConfig) -> Any:
    """This worker's client for ``cfg``'s endpoint, reused by every shard on its event loop."""
    def build() -> Any:
        client = openai_client(cfg)
        close_at_exit(client.close)
        return client

    base_url, key = resolve_endpoint(cfg)
    return worker_cached(("openai-client", base_url, key, cfg.http_client, cfg.concurrency,
                          cfg.request_timeout_s), build)


@dataclass
class _Answer:
    """An HTTP answer: status, headers (case-insensitive ``get``) and body."""

    status: int
    headers: Any
    body: bytes
    message: str = ""
    """The error's own words, for a 4xx/5xx."""


class _TransportFailure(Exception):
    """No HTTP answer: timeout, refused or dropped connection (the message names which)."""


class AioHttpChat:
    """``POST {base_url}/chat/completions`` over one aiohttp session: the OpenAI wire protocol spoken
    directly, with the headers the openai SDK sends (bearer key, ``OPENAI_ORG_ID`` /
    ``OPENAI_PROJECT_ID``).

    Why not the SDK: its request path (options, headers, retries wrapper, its own aiohttp adapter)
    costs more client CPU per request than the request itself at high concurrency, and its import
    delays the first request (bench/generate.py measures both).
    """

    def __init__(self, cfg: LLMConfig) -> None:
        base_url, key = resolve_endpoint(cfg)
        self.url = (base_url or "https://api.openai.com/v1").rstrip("/") + "/chat/completions"
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                        "Accept": "application/json", "User-Agent": "textbook-pipeline"}
        for header, variable in (("OpenAI-Organization", "OPENAI_ORG_ID"), ("OpenAI-Project", "OPENAI_PROJECT_ID")):
            if os.environ.get(variable):
                self.headers[header] = os.environ[variable]
        self.limit = cfg.concurrency
        self.timeout_s = cfg.request_timeout_s
        self.proxy: Any = None
        self._session: Any = None

    def _open(self) -> Any:
        import aiohttp
        from aiohttp.helpers import get_env_proxy_for_url
        from yarl import URL

        tls: Any = True
        if self.url.startswith("https:"):
            # the CA bundle is loaded once per worker process, not once per shard
            tls = worker_cached(("ssl-context", "aiohttp"), _ssl_context)
        # HTTP(S)_PROXY / NO_PROXY, as the SDK's httpx honours them: looked up once here, since
        # aiohttp's trust_env looks them (and ~/.netrc) up in a thread on every request
        with suppress(LookupError):
            self.proxy, _ = get_env_proxy_for_url(URL(self.url))
        connector = aiohttp.TCPConnector(limit=self.limit, ssl=tls)
        return aiohttp.ClientSession(connector=connector, headers=self.headers,
                                     timeout=aiohttp.ClientTimeout(total=self.timeout_s))

    async def chat(self, body: dict) -> _Answer:
        import aiohttp

        if self._session is None:
            self._session = self._open()  # on the event loop that will use it
        try:
            async with self._session.post(self.url, data=json.dumps(body).encode(), proxy=self.proxy) as response:
                raw = await response.read()
                return _Answer(response.status, response.headers, raw,
                               "" if response.status < 300 else _error_message(raw))
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            raise _TransportFailure(_aiohttp_failure(e)) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _ssl_context() -> Any:
    import ssl

    try:
        import certifi  # the bundle the SDK verifies against
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _error_message(raw: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body's first line."""
    try:
        error = json.loads(raw).get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except (ValueError, AttributeError):
        pass
    return raw[:200].decode("utf-8", "replace").strip()


def _aiohttp_failure(e: BaseException) -> str:
    """'timeout' or 'connection error (cause)' for an aiohttp failure."""
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    cause = getattr(e, "os_error", None) or e  # a refused connection: the OSError behind it
    return f"connection error ({cause})"


class OpenAIBackend:
    """Chat completions against an OpenAI-compatible server; retried here (the SDK's own retries are off)."""

    batch_size = 1  # the server batches; the shard keeps ``concurrency`` requests in flight
    remote = True

    def __init__(self, cfg: LLMConfig, client: Any | None = None) -> None:
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
        cfg = self.cfg
        body = {"model": cfg.model, "messages": messages, **params.body()}
        last = ""
        for attempt in range(cfg.max_retries + 1):
            start = time.perf_counter()
            try:
                answer = await self._post(body)
            except _TransportFailure as e:
                last = str(e)
                wait = self._backoff(attempt)
            else:
                if answer.status < 300:
                    return parse_completion(answer.body, time.perf_counter() - start, self.where)
                fatal = self._fatal(answer.status, answer.message)
                if fatal:
                    raise GenerateError(fatal) from None
                last = f"HTTP {answer.status}"
                wait = retry_after(answer.headers) or self._backoff(attempt)
            if attempt < cfg.max_retries:
                await asyncio.sleep(wait)
        attempts = cfg.max_retries + 1
        raise GenerateError(f"{self.where}: giving up after {attempts} attempt{'s' * (attempts > 1)} "
                            f"(last: {last}); completed rows are kept, rerun to resume")

    async def _post(self, body: dict) -> _Answer:
        if isinstance(self.client, AioHttpChat):
            return await self.client.chat(body)
        import openai

        try:
            # the SDK's low-level ``post`` (its documented way to custom requests): same client,
            # headers, errors and timeouts, without the per-request walk of the typed-params
            # transform and the response-model build
            raw = await self.client.post("/chat/completions", body=body, cast_to=bytes)
        except openai.APIStatusError as e:
            return _Answer(e.status_code, e.response.headers, b"", str(getattr(e, "message", "") or ""))
        except openai.APIConnectionError as e:  # includes APITimeoutError
            raise _TransportFailure(transport_failure(e)) from None
        return _Answer(200, {}, raw)

    def _fatal(self, status: int, message: str) -> str | None:
        model, where = self.cfg.model, self.where
        if status == 401:
            return f"{where}: 401 Unauthorized: wrong API key (check generate.api_key or OPENAI_API_KEY)"
        if status == 403:
            return f"{where}: 403 Forbidden: this API key may not use model '{model}'"
        if status == 404:
            return f"{where}: 404 Not Found: unknown model '{model}' (check generate.model and generate.base_url)"
        if status in (400, 413, 422):
            detail = message.splitlines()[:1]
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


def parse_completion(raw: bytes, latency: float, where: str) -> Completion:
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


class BatchConnectionError(GenerateError):
    """The Batch API did not answer (timeout, refused or dropped connection); nothing it was sent is lost."""


class BatchAPI:
    """An OpenAI-compatible server's Batch API (``/v1/files``, ``/v1/batches``), synchronous: the driver
    uploads, creates, polls and downloads while the provider does the work.

    Same endpoint and key as the online client; the SDK retries each call (``generate.max_retries``).
    An error answer raises ``GenerateError`` (``HTTP <status>: <message>``), no answer
    :class:`BatchConnectionError`.
    """

    ENDPOINT = "/v1/chat/completions"

    def __init__(self, cfg: LLMConfig) -> None:
        self.cfg = cfg
        self.where = base_url_of(cfg) or "api.openai.com"
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The SDK's client, built at the first call (a dry run never imports the SDK)."""
        if self._client is None:
            import openai

            base_url, key = resolve_endpoint(self.cfg)
            self._client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=self.cfg.max_retries,
                                         timeout=self.cfg.request_timeout_s)
        return self._client

    def upload(self, name: str, blob: bytes) -> str:
        """A JSONL batch input file; its file id."""
        with self._answers():
            return self.client.files.create(file=(name, blob, "application/jsonl"), purpose="batch").id

    def create(self, input_file_id: str, window: str, key: str) -> Any:
        """A batch of the file's requests, tagged with ``key`` (its record in the run's book)."""
        with self._answers():
            return self.client.batches.create(input_file_id=input_file_id, endpoint=self.ENDPOINT,
                                              completion_window=window, metadata={"textbook_batch": key})

    def retrieve(self, batch_id: str) -> Any:
        with self._answers():
            return self.client.batches.retrieve(batch_id)

    def recent(self, limit: int = 100) -> Iterator[Any]:
        """The server's batches, newest first, a page of ``limit`` at a time as the caller reads on."""
        with self._answers():
            yield from self.client.batches.list(limit=limit)

    def content(self, file_id: str) -> str:
        """An output or error file's text."""
        with self._answers():
            return self.client.files.content(file_id).text

    def completion(self, body: dict[str, Any], latency: float) -> Completion:
        """The ``Completion`` of an output line's response body."""
        return parse_completion(json.dumps(body).encode("utf-8"), latency, self.where)

    @contextmanager
    def _answers(self) -> Iterator[None]:
        import openai

        try:
            yield
        except openai.APIStatusError as e:
            raise GenerateError(f"{self.where}: batch API: HTTP {e.status_code}: "
                                f"{' '.join(str(getattr(e, 'message', '')).splitlines()[:1])}") from None
        except openai.APIConnectionError as e:
            raise BatchConnectionError(f"{self.where}: batch API: {type(e).__name__}") from None


class TransformersBackend:
    """In-process batched generation: a Hub id, a local folder or GGUF file (``pipeline.models``), its
    chat template, left padding."""

    concurrency = 1  # one forward pass at a time: a second would only compete for the same device
    remote = False

    def __init__(self, model: str, device: str | None = None, batch_size: int = 8) -> None:
        import torch

        from pipeline.models import load_causal_lm

        try:
            self.tokenizer, self.model = load_causal_lm(model)
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
        from transformers import StoppingCriteriaList

        tok = self.tokenizer
        start = time.perf_counter()
        enc = tok([self._prompt(m) for m in batch], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(self.device)
        torch.manual_seed(seed)
        penalty = {} if params.repetition_penalty is None else {"repetition_penalty": params.repetition_penalty}
        sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, **penalty} \
            if params.temperature > 0 else {"do_sample": False, **penalty}
        eos = {tok.eos_token_id, *([self.model.generation_config.eos_token_id]
                                   if isinstance(self.model.generation_config.eos_token_id, int)
                                   else self.model.generation_config.eos_token_id or [])}
        loops = LoopStop(enc["input_ids"].shape[1], eos)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=params.max_tokens, pad_token_id=tok.pad_token_id,
                                      stopping_criteria=StoppingCriteriaList([loops]), **sampling)
        latency = (time.perf_counter() - start) / len(batch)
        results = []
        rows = out[:, enc["input_ids"].shape[1]:].tolist()
        for r, (row, mask) in enumerate(zip(rows, enc["attention_mask"], strict=True)):
            if r in loops.stopped:  # cut off in a loop: no ending of its own (the padding after is EOS)
                stop, kept = None, row[:loops.stopped[r]]
            else:
                stop = next((i for i, t in enumerate(row) if t in eos), None)
                kept = row if stop is None else row[:stop]
            results.append(Completion(
                text=tok.decode(kept, skip_special_tokens=True).strip(),
                finish_reason="stop" if stop is not None else "length",
                prompt_tokens=int(mask.sum()), completion_tokens=len(kept) + (stop is not None),
                latency_s=round(latency, 4)))
        return results


class LoopStop:
    """Stops a row whose last ``span`` tokens already stand twice earlier in its completion: a small
    model that loops would otherwise spend its whole ``max_tokens`` (and hold its batch) repeating.
    A row that has ended (an ``eos`` token; its padding repeats) is left alone. ``stopped`` maps each
    row it stopped to its completion length then."""

    def __init__(self, prompt_length: int, eos: set[int], span: int = 24, every: int = 8) -> None:
        self.prompt_length, self.eos, self.span, self.every = prompt_length, eos, span, every
        self.stopped: dict[int, int] = {}

    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        length = input_ids.shape[1] - self.prompt_length
        if length < 3 * self.span or length % self.every:
            for r in self.stopped:
                done[r] = True
            return done
        for r, row in enumerate(input_ids[:, self.prompt_length:].tolist()):
            if r in self.stopped:
                done[r] = True
                continue
            if self.eos.intersection(row):
                continue
            text = "," + ",".join(map(str, row)) + ","
            tail = "," + ",".join(map(str, row[-self.span:])) + ","
            if text.count(tail) >= 3:
                self.stopped[r] = length
                done[r] = True
        return done


def load_quietly(cfg: LLMConfig) -> TransformersBackend:
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
