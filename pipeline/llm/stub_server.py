"""A real OpenAI-compatible HTTP server on 127.0.0.1: the project's test server, also for benchmarks and demos.

Serves ``POST /v1/chat/completions`` and ``GET /v1/models`` with the OpenAI wire format over
HTTP/1.1 keep-alive. It is one asyncio event loop (in a background thread, or the main one for
``serve_forever``), so thousands of concurrent connections cost no thread each, and a fixed
``latency_s`` is an ``asyncio.sleep``, not a blocked thread: a benchmark measures the client, not this.

Answers come from a pluggable ``responder(messages, params) -> str`` (default: deterministic
textbook-like prose derived from the prompt); whitespace-separated words count as tokens, and an
answer longer than ``max_tokens`` is cut with ``finish_reason="length"``. Faults are injected per
request, in order: ``"429"`` (with Retry-After), ``"500"``, ``"503"``, ``"slow"`` (answer after
``slow_s``), ``"drop"`` (close the connection without answering), ``"length"`` (truncate), or a
``Fault``. A wrong key gets 401, an unknown model 404. ``requests`` logs every chat request (its
``time`` of arrival and the time it was ``answered``, epoch seconds); ``max_in_flight`` is the peak
concurrency.

It also serves OpenAI's Batch API: ``POST /v1/files`` (multipart, purpose "batch"), ``GET
/v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches`` and ``GET /v1/batches/{id}``. A
batch is ``validating`` for the first quarter of ``batch_delay_s``, then ``in_progress``, then
``completed`` (its lines answered by the same responder, each line's usage in its body). Faults:
``batch_errors`` (custom ids whose line goes to the error file with a 500, once each) and
``batch_expiry`` (per created batch, in order: ``None`` completes it, ``n`` expires it with only its
first ``n`` lines answered). ``batches`` holds every created batch (a client that never submits
twice creates each once).

    with StubServer(faults=["429", None, "500"], api_key="sk-test") as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-test")

    python -m pipeline.llm.stub_server --port 8000 --latency 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

Responder = Callable[[list[dict], dict], str]

# An answer's sentences are drawn from subject x verb x object (1,728 of them) without repeats, so a
# conversation of several answers does not repeat itself (the Gopher repetition rules flag that).
_SUBJECTS = ["A definition", "A worked example", "The first step", "Each step", "A common mistake", "A simple diagram",
             "The same reasoning", "The exercise below", "The key property", "Careful observation", "Each term",
             "An everyday analogy"]
_VERBS = ["names", "shows", "checks", "explains", "connects", "tests", "builds on", "separates", "compares",
          "supports", "describes", "follows from"]
_OBJECTS = ["the idea we study", "what must follow", "the case before it", "the final result", "its separate parts",
            "the larger cases", "the worked solution", "why the method works", "the first question",
            "the formula in words", "the abstract rule", "a careful estimate"]
_MAX_HEADER_BYTES = 64 * 1024


def textbook_responder(messages: list[dict], params: dict) -> str:
    """Deterministic textbook-like prose: the same prompt always gets the same answer."""
    prompt = "\n".join(m.get("content", "") for m in messages)
    digest = hashlib.sha512(prompt.encode("utf-8")).digest()
    topic = " ".join(prompt.split()[:6])
    picks = dict.fromkeys((digest[k] % 12, digest[k + 1] % 12, digest[k + 2] % 12) for k in range(0, 60, 3))
    lines = [f"{_SUBJECTS[s]} {_VERBS[v]} {_OBJECTS[o]}." for s, v, o in list(picks)[:12]]
    return " ".join([lines[0], f"This lesson is about {topic}.", *lines[1:]])


@dataclass
class Fault:
    """One injected failure: ``kind`` is 429, 500, 503, slow, drop or length."""

    kind: str
    retry_after: float | None = 1.0
    delay_s: float = 5.0


@dataclass
class _Reply:
    """An HTTP answer to send, or ``status=None`` to close the connection without one."""

    status: int | None
    body: dict | None = None
    headers: dict[str, str] | None = None
    raw: bytes | None = None
    """A non-JSON body (a file's content), sent as is."""


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, {"error": {"message": message, "type": "invalid_request_error", "code": code}}, headers)


def _encode(reply: _Reply) -> bytes:
    blob = reply.raw if reply.raw is not None else json.dumps(reply.body).encode("utf-8")
    kind = "application/octet-stream" if reply.raw is not None else "application/json"
    head = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}", f"Content-Type: {kind}",
            f"Content-Length: {len(blob)}", *(f"{k}: {v}" for k, v in (reply.headers or {}).items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + blob


class StubServer:
    """The server as a context manager; ``base_url`` ends in ``/v1`` like OpenAI's."""

    def __init__(self, responder: Responder | None = None, faults: Iterable[str | Fault | None] = (),
                 api_key: str | None = None, models: Iterable[str] = ("stub-model",), latency_s: float = 0.0,
                 slow_s: float = 5.0, host: str = "127.0.0.1", port: int = 0, batch_delay_s: float = 0.0,
                 batch_errors: Iterable[str] = (), batch_expiry: Iterable[int | None] = (),
                 hold: Callable[[dict], Awaitable[None]] | None = None) -> None:
        self.responder = responder or textbook_responder
        self.hold = hold
        """Awaited on the server's loop before a chat request is answered: a test can keep an answer
        back until another request has arrived, instead of timing it."""
        self.slow_s = slow_s
        self.faults: list[Fault | None] = [f if f is None or isinstance(f, Fault) else Fault(str(f), delay_s=slow_s)
                                           for f in faults]
        self.api_key = api_key
        self.models = list(models)
        self.latency_s = latency_s
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        """TCP connections accepted so far (a client that keeps them alive opens few)."""
        self.batch_delay_s = batch_delay_s
        self.batch_errors = set(batch_errors)
        self.batch_expiry: list[int | None] = list(batch_expiry)
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        """Every batch created, by id, in order of creation."""
        # bound now, so base_url is known before the loop runs; a deep backlog takes bursts of clients
        self._sock = socket.create_server((host, port), backlog=1024)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._open: dict[asyncio.StreamWriter, asyncio.Task] = {}

    @property
    def base_url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    def completed(self) -> list[dict[str, Any]]:
        """Requests answered with 200: each a log entry with ``messages``."""
        return [r for r in self.requests if r["status"] == 200]

    def serve_forever(self, ready: threading.Event | None = None) -> None:
        """Serve in this thread until ``stop()`` (or Ctrl-C)."""
        asyncio.run(self._serve(ready))

    def start(self) -> StubServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, args=(ready,), daemon=True, name="stub-server")
        self._thread.start()
        ready.wait(30)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _serve(self, ready: threading.Event | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self._sock, limit=_MAX_HEADER_BYTES)
        if ready is not None:
            ready.set()
        async with server:
            await self._stopping.wait()
        # clients keep connections alive between requests (a worker's client outlives its shards):
        # end them as a server would, by closing the socket, so their handlers return rather than
        # being cancelled by asyncio.run with a traceback each
        for writer in list(self._open):
            writer.close()
        await asyncio.gather(*self._open.values(), return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One keep-alive connection: read a request, answer it, repeat until the client goes."""
        self._open[writer] = asyncio.current_task()
        self.connections += 1
        connection = self.connections
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, path = head[0].split(" ")[:2]
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                reply = await self._answer(method, path.split("?")[0].rstrip("/"), headers, body, connection)
                if reply.status is None:
                    return  # a dropped connection: closed below without an answer
                writer.write(_encode(reply))
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            return  # the client went away (or sent garbage): nothing to answer
        finally:
            self._open.pop(writer, None)
            writer.close()

    async def _answer(self, method: str, route: str, headers: dict[str, str], raw: bytes,
                      connection: int) -> _Reply:
        if method == "GET" and route == "/v1/models":
            return self._unauthorized(headers) or _Reply(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "stub"} for m in self.models]})
        if route.startswith(("/v1/files", "/v1/batches")):
            return self._unauthorized(headers) or self._batch_api(method, route, headers, raw)
        if method != "POST" or route != "/v1/chat/completions":
            return _error(404, f"no route {method} {route}", "not_found")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not JSON", "invalid_request")
        if not isinstance(body, dict) or not body.get("messages"):
            return _error(400, "'messages' is required and must be a non-empty list", "invalid_request")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        entry = {"time": time.time(), "model": body.get("model"), "messages": body["messages"], "status": 0,
                 "connection": connection}
        try:
            reply = await self._complete(headers, body)
            entry["status"] = reply.status or 0
            return reply
        finally:
            self.in_flight -= 1
            entry["answered"] = time.time()
            self.requests.append(entry)

    def _unauthorized(self, headers: dict[str, str]) -> _Reply | None:
        if self.api_key is None or headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        return _error(401, "Incorrect API key provided.", "invalid_api_key")

    async def _complete(self, headers: dict[str, str], body: dict) -> _Reply:
        denied = self._unauthorized(headers)
        if denied:
            return denied
        model = body.get("model")
        if model not in self.models:
            return _error(404, f"The model '{model}' does not exist or you do not have access to it.",
                          "model_not_found")
        fault = self.faults.pop(0) if self.faults else None
        if self.hold is not None:
            await self.hold(body)
        return await self._chat(body, fault)

    async def _chat(self, body: dict, fault: Fault | None, latency: bool = True) -> _Reply:
        model = body.get("model")
        if self.latency_s and latency:
            await asyncio.sleep(self.latency_s)
        kind = fault.kind if fault is not None else None
        if fault is not None and kind == "429":
            retry = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            return _error(429, "Rate limit reached, slow down.", "rate_limit_exceeded", retry)
        if kind in ("500", "503"):
            return _error(int(kind), "The server had an error.", "server_error")
        if kind == "drop":
            return _Reply(None)
        if fault is not None and kind == "slow":
            await asyncio.sleep(fault.delay_s)
        messages = body["messages"]
        text = self.responder(messages, body)
        words = text.split()
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        finish = "stop"
        if (max_tokens and len(words) > max_tokens) or kind == "length":
            words = words[: max_tokens or max(1, len(words) // 2)]
            text, finish = " ".join(words), "length"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        return _Reply(200, {
            "id": f"chatcmpl-{hashlib.sha1(repr(messages).encode()).hexdigest()[:12]}",
            "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                      "total_tokens": prompt_tokens + len(words)}})


    # --- the Batch API ----------------------------------------------------------------------------

    def _batch_api(self, method: str, route: str, headers: dict[str, str], raw: bytes) -> _Reply:
        parts = route.split("/")[2:]  # files | batches, then id, then content
        if method == "POST" and parts == ["files"]:
            return self._upload(headers, raw)
        if method == "GET" and len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
            file = self.files.get(parts[1])
            return _Reply(200, raw=file["content"]) if file else _error(404, f"no file {parts[1]}", "not_found")
        if method == "POST" and parts == ["batches"]:
            return self._create_batch(raw)
        if method == "GET" and parts == ["batches"]:
            data = [self._poll(b) for b in reversed(self.batches.values())]
            return _Reply(200, {"object": "list", "data": data, "has_more": False,
                                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})
        if method == "GET" and len(parts) == 2 and parts[0] == "batches":
            batch = self.batches.get(parts[1])
            return _Reply(200, self._poll(batch)) if batch else _error(404, f"no batch {parts[1]}", "not_found")
        return _error(404, f"no route {method} {route}", "not_found")

    def _upload(self, headers: dict[str, str], raw: bytes) -> _Reply:
        import email.parser
        import email.policy

        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {headers.get('content-type', '')}\r\n\r\n".encode("latin-1") + raw)
        fields: dict[str, Any] = {}
        filename = "upload.jsonl"
        for part in message.iter_parts() if message.is_multipart() else []:
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                filename = part.get_filename()
            fields[name] = part.get_payload(decode=True)
        if "file" not in fields or fields.get("purpose", b"").decode() != "batch":
            return _error(400, "multipart 'file' and purpose 'batch' are required", "invalid_request")
        return _Reply(200, self._store_file(fields["file"], filename, "batch"))

    def _store_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = f"file-{len(self.files) + 1:06d}"
        self.files[file_id] = {"content": content}
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed"}

    def _create_batch(self, raw: bytes) -> _Reply:
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not JSON", "invalid_request")
        if body.get("input_file_id") not in self.files:
            return _error(400, f"no file {body.get('input_file_id')!r}", "invalid_request")
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return _error(400, "endpoint must be /v1/chat/completions, completion_window 24h", "invalid_request")
        batch_id = f"batch_{len(self.batches) + 1:06d}"
        lines = [json.loads(line) for line in self.files[body["input_file_id"]]["content"].splitlines() if line.strip()]
        self.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": "24h", "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
            "metadata": body.get("metadata"), "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "_lines": lines, "_created": time.monotonic(),
            "_expire_after": self.batch_expiry.pop(0) if self.batch_expiry else None}
        return _Reply(200, self._public(self.batches[batch_id]))

    def _poll(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch as a client sees it now: its status moves on with time, and ends once."""
        elapsed = time.monotonic() - batch["_created"]
        if batch["status"] in ("validating", "in_progress"):
            if elapsed >= self.batch_delay_s:
                self._finish(batch)
            elif elapsed >= self.batch_delay_s / 4:
                batch["status"], batch["in_progress_at"] = "in_progress", int(time.time())
        return self._public(batch)

    def _finish(self, batch: dict[str, Any]) -> None:
        lines, limit = batch["_lines"], batch["_expire_after"]
        out, err = [], []
        for n, line in enumerate(lines):
            if limit is not None and n >= limit:
                err.append({"id": f"batch_req_{n}", "custom_id": line["custom_id"], "response": None,
                            "error": {"code": "batch_expired",
                                      "message": "This request could not be executed before the completion window expired."}})
                continue
            if line["custom_id"] in self.batch_errors:
                self.batch_errors.discard(line["custom_id"])
                err.append({"id": f"batch_req_{n}", "custom_id": line["custom_id"], "error": None, "response": {
                    "status_code": 500, "request_id": f"req_{n}",
                    "body": {"error": {"message": "The server had an error.", "type": "server_error"}}}})
                continue
            reply = self._chat_now(line["body"])
            out.append({"id": f"batch_req_{n}", "custom_id": line["custom_id"], "error": None,
                        "response": {"status_code": reply.status, "request_id": f"req_{n}", "body": reply.body}})
        now = int(time.time())
        for key, records in (("output_file_id", out), ("error_file_id", err)):
            if records:
                blob = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
                batch[key] = self._store_file(blob, f"{batch['id']}_{key}.jsonl", "batch_output")["id"]
        batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        if limit is not None and limit < len(lines):
            batch["status"], batch["expired_at"] = "expired", now
        else:
            batch["status"], batch["completed_at"] = "completed", now

    def _chat_now(self, body: dict) -> _Reply:
        """A batch line's answer: the chat endpoint's, without its latency (the batch's delay stands in)."""
        coro = self._chat(body, None, latency=False)
        try:
            coro.send(None)  # nothing in it awaits without latency or a fault: it runs to its return
        except StopIteration as done:
            return done.value
        coro.close()
        raise RuntimeError("a batch line's answer awaited")  # pragma: no cover

    @staticmethod
    def _public(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="an OpenAI-compatible stub server for offline demos")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--api-key", default=None, help="require this key (default: any)")
    parser.add_argument("--model", action="append", help="served model names (default: stub-model)")
    args = parser.parse_args(argv)
    srv = StubServer(api_key=args.api_key, models=args.model or ["stub-model"], latency_s=args.latency,
                     port=args.port)
    print(f"serving {', '.join(srv.models)} at {srv.base_url} (Ctrl-C to stop)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        srv.serve_forever()


if __name__ == "__main__":
    main()
