"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests, benchmarks and offline demos.

Serves ``POST /v1/chat/completions`` and ``GET /v1/models`` with the OpenAI wire format. Answers come
from a pluggable ``responder(messages, params) -> str`` (default: deterministic textbook-like prose
derived from the prompt); whitespace-separated words count as tokens, and an answer longer than
``max_tokens`` is cut with ``finish_reason="length"``. Faults are injected per request, in order:
``"429"`` (with Retry-After), ``"500"``, ``"503"``, ``"slow"`` (answer after ``slow_s``), ``"drop"``
(close the connection without answering), ``"length"`` (truncate), or a ``Fault``. A wrong key gets
401, an unknown model 404. ``requests`` logs every request; ``max_in_flight`` is the peak concurrency.

    with StubServer(faults=["429", None, "500"], api_key="sk-test") as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-test")

    python -m pipeline.generate.stub_server --port 8000 --latency 0.2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[list[dict], dict], str]

_SENTENCES = [
    "A definition gives a precise name to an idea so that we can reason about it.",
    "Consider a worked example that applies the idea step by step.",
    "First we write down what is known, then we ask what must follow from it.",
    "Notice how each step depends only on the step before it.",
    "A common mistake is to skip the check at the end, so always verify the result.",
    "We can picture the situation with a simple diagram of its parts.",
    "The same reasoning carries over to larger cases with only small changes.",
    "Try the exercise below before reading the solution that follows it.",
    "In summary, the key property explains why the method works.",
    "Historically, this question was first studied by careful observation.",
    "Each term in the formula has a meaning that we can state in words.",
    "An analogy from everyday life makes the abstract rule easier to remember.",
]


def textbook_responder(messages: list[dict], params: dict) -> str:
    """Deterministic textbook-like prose: the same prompt always gets the same answer."""
    prompt = "\n".join(m.get("content", "") for m in messages)
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    topic = " ".join(prompt.split()[:6])
    lines = [_SENTENCES[digest[0] % len(_SENTENCES)], f"This lesson is about {topic}."]
    lines += [_SENTENCES[b % len(_SENTENCES)] for b in digest[1:12]]
    if '"Student:"' in prompt:  # the conversation template: answer in its turn format, so SFT can parse it
        return "\n".join(f"{'Student' if i % 2 == 0 else 'Teacher'}: {line}" for i, line in enumerate(lines[:8]))
    return " ".join(lines)


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # the stdlib's backlog of 5 refuses bursts of concurrent clients
    daemon_threads = True


@dataclass
class Fault:
    """One injected failure: ``kind`` is 429, 500, 503, slow, drop or length."""

    kind: str
    retry_after: float | None = 1.0
    delay_s: float = 5.0


class StubServer:
    """The server as a context manager; ``base_url`` ends in ``/v1`` like OpenAI's."""

    def __init__(self, responder: Responder | None = None, faults: Iterable[str | Fault | None] = (),
                 api_key: str | None = None, models: Iterable[str] = ("stub-model",), latency_s: float = 0.0,
                 slow_s: float = 5.0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.responder = responder or textbook_responder
        self.faults: list[Fault | None] = [self._fault(f) for f in faults]
        self.api_key = api_key
        self.models = list(models)
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = _Server((host, port), _handler_for(self))
        self._thread: threading.Thread | None = None

    def _fault(self, f: str | Fault | None) -> Fault | None:
        if f is None or isinstance(f, Fault):
            return f
        return Fault(str(f), delay_s=getattr(self, "slow_s", 5.0))

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def completed(self) -> list[dict[str, Any]]:
        """Requests answered with 200: each a log entry with ``messages``."""
        return [r for r in self.requests if r["status"] == 200]

    def start(self) -> StubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="stub-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def next_fault(self) -> Fault | None:
        with self._lock:
            return self.faults.pop(0) if self.faults else None

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def log(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)


def _handler_for(server: StubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

        def log_message(self, *args: Any) -> None:  # quiet: tests read the request log instead
            pass

        def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            blob = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(blob)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(blob)

        def _error(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": code}},
                       headers)

        def _authorized(self) -> bool:
            if server.api_key is None:
                return True
            if self.headers.get("Authorization") == f"Bearer {server.api_key}":
                return True
            self._error(401, "Incorrect API key provided.", "invalid_api_key")
            return False

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/v1/models":
                self._error(404, f"no route {self.path}", "not_found")
                return
            if self._authorized():
                self._send(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "stub"} for m in server.models]})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route {self.path}", "not_found")
                return
            try:
                body = json.loads(self.rfile.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError, ConnectionError):
                # a client that died mid-upload: nothing to answer, nothing to log
                self.close_connection = True
                return
            if not isinstance(body, dict) or not body.get("messages"):
                self._error(400, "'messages' is required and must be a non-empty list", "invalid_request")
                return
            server.enter()
            entry = {"time": time.time(), "model": body.get("model"), "messages": body.get("messages", []),
                     "status": None}
            try:
                entry["status"] = self._complete(body)
            finally:
                server.leave()
                server.log(entry)

        def _complete(self, body: dict) -> int:
            if not self._authorized():
                return 401
            model = body.get("model")
            if model not in server.models:
                self._error(404, f"The model '{model}' does not exist or you do not have access to it.",
                            "model_not_found")
                return 404
            fault = server.next_fault()
            if server.latency_s:
                time.sleep(server.latency_s)
            if fault is not None:
                if fault.kind == "429":
                    headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                    self._error(429, "Rate limit reached, slow down.", "rate_limit_exceeded", headers)
                    return 429
                if fault.kind in ("500", "503"):
                    self._error(int(fault.kind), "The server had an error.", "server_error")
                    return int(fault.kind)
                if fault.kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return 0
                if fault.kind == "slow":
                    time.sleep(fault.delay_s)
            messages = body.get("messages", [])
            text = server.responder(messages, body)
            words = text.split()
            max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
            finish = "stop"
            if (max_tokens and len(words) > max_tokens) or (fault is not None and fault.kind == "length"):
                words = words[: max_tokens or max(1, len(words) // 2)]
                text, finish = " ".join(words), "length"
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
            self._send(200, {
                "id": f"chatcmpl-{hashlib.sha1(repr(messages).encode()).hexdigest()[:12]}",
                "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                          "total_tokens": prompt_tokens + len(words)}})
            return 200

    return Handler


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
    try:
        srv._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv._httpd.server_close()


if __name__ == "__main__":
    main()
