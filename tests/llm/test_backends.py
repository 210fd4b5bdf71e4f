"""The OpenAI backend against a real local HTTP server: retries, Retry-After, fail-fast errors, flags."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from pydantic import SecretStr

from pipeline.config import load_config
from pipeline.errors import GenerateError
from pipeline.llm.backends import (
    BatchAPI,
    BatchConnectionError,
    OpenAIBackend,
    Sampling,
    open_backend,
    retry_after,
)
from pipeline.llm.batch import request_line
from pipeline.llm.flags import completion_flags
from pipeline.llm.stub_server import Fault, StubServer

MESSAGES = [{"role": "user", "content": "Explain why the sky is blue."}]


def complete(srv: StubServer, *overrides: str, api_key: str = "sk-test"):
    cfg = load_config(None, [f"generate.base_url={srv.base_url}", "generate.model=stub-model",
                             f"generate.api_key={api_key}", "generate.retry_backoff_s=0.05", *overrides])

    async def go():
        backend = OpenAIBackend(cfg.generate)
        try:
            return await backend.complete_one(MESSAGES, Sampling.of(cfg.generate))
        finally:
            await backend.close()

    return asyncio.run(go())


def test_answer_has_text_usage_and_latency():
    with StubServer() as srv:
        c = complete(srv)
    assert c.text and c.finish_reason == "stop"
    assert c.prompt_tokens == 6 and c.completion_tokens == len(c.text.split())
    assert c.latency_s > 0
    assert len(srv.requests) == 1


def test_answer_is_the_responders_text_verbatim():
    """Line breaks survive the wire: the conversation template's turns are one per line."""
    with StubServer(responder=lambda messages, params: "Student: Why?\nTeacher: Because  light scatters.") as srv:
        c = complete(srv)
    assert c.text == "Student: Why?\nTeacher: Because  light scatters." and c.completion_tokens == 6


def test_429_waits_for_retry_after_then_succeeds():
    with StubServer(faults=[Fault("429", retry_after=1.0)]) as srv:
        start = time.perf_counter()
        c = complete(srv)
        elapsed = time.perf_counter() - start
    assert c.text
    assert [r["status"] for r in srv.requests] == [429, 200]
    assert srv.requests[1]["time"] - srv.requests[0]["time"] >= 0.95
    assert elapsed >= 1.0


TRANSPORTS = pytest.mark.parametrize("http_client", ["aiohttp", "httpx"])


@pytest.mark.slow
@TRANSPORTS
@pytest.mark.parametrize("fault", ["500", "503", "drop"])
def test_transient_failures_are_retried(fault, http_client):
    with StubServer(faults=[fault, fault]) as srv:
        c = complete(srv, f"generate.http_client={http_client}")
    assert c.text
    assert len(srv.requests) == 3 and srv.requests[-1]["status"] == 200


@pytest.mark.slow
@TRANSPORTS
def test_slow_answer_times_out_and_is_retried(http_client):
    with StubServer(faults=[Fault("slow", delay_s=3.0)]) as srv:
        c = complete(srv, "generate.request_timeout_s=0.5", f"generate.http_client={http_client}")
    assert c.text
    slow, *retries = sorted(srv.requests, key=lambda r: r["time"])
    # the retry reached the server before the slow answer left it: the client did not wait it out
    assert retries and retries[-1]["status"] == 200 and retries[0]["time"] < slow["answered"]


@pytest.mark.slow
@TRANSPORTS
def test_timeout_is_named_a_timeout(http_client):
    with StubServer(faults=[Fault("slow", delay_s=3.0)]) as srv, pytest.raises(GenerateError) as err:
        complete(srv, "generate.request_timeout_s=0.3", "generate.max_retries=0", f"generate.http_client={http_client}")
    assert "giving up after 1 attempt (last: timeout)" in str(err.value)


def test_gives_up_after_max_retries_with_one_line():
    with StubServer(faults=["503"] * 10) as srv, pytest.raises(GenerateError) as err:
        complete(srv, "generate.max_retries=2")
    assert len(srv.requests) == 3
    assert "giving up after 3 attempts (last: HTTP 503)" in str(err.value)
    assert "\n" not in str(err.value)


def test_wrong_key_fails_fast_and_never_shows_the_key():
    with StubServer(api_key="sk-right") as srv, pytest.raises(GenerateError) as err:
        complete(srv, api_key="sk-wrong-secret")
    assert "401 Unauthorized: wrong API key" in str(err.value)
    assert "sk-wrong-secret" not in str(err.value)
    assert len(srv.requests) == 1


def test_unknown_model_fails_fast():
    with StubServer(models=["served-model"]) as srv, pytest.raises(GenerateError) as err:
        complete(srv)
    assert "404 Not Found: unknown model 'stub-model'" in str(err.value)
    assert len(srv.requests) == 1


@TRANSPORTS
def test_unreachable_server_is_a_one_line_error(http_client):
    cfg = load_config(None, ["generate.base_url=http://127.0.0.1:9/v1", "generate.max_retries=1",
                             "generate.retry_backoff_s=0.01", f"generate.http_client={http_client}"])

    async def go():
        backend = OpenAIBackend(cfg.generate)
        try:
            await backend.complete_one(MESSAGES, Sampling.of(cfg.generate))
        finally:
            await backend.close()

    # a refused connection is not a timeout (aiohttp's transport maps it to ConnectTimeout)
    with pytest.raises(GenerateError, match=r"127.0.0.1:9/v1: giving up after 2 attempts \(last: connection error"):
        asyncio.run(go())


def test_truncated_completion_is_flagged():
    with StubServer() as srv:
        c = complete(srv, "generate.max_tokens=5")
    assert c.finish_reason == "length" and c.completion_tokens == 5
    assert completion_flags(c.text, c.finish_reason) == ["truncated"]


def test_flags_empty_and_refusal_but_not_lessons_that_mention_sorry():
    assert completion_flags("   ", "stop") == ["empty"]
    assert completion_flags("I'm sorry, but I can't help with that.", "stop") == ["refusal"]
    assert completion_flags("As an AI language model, I cannot write this.", "stop") == ["refusal"]
    assert completion_flags("Saying 'I'm sorry' is a way to repair a friendship.", "stop") == []


def test_retry_after_parses_seconds_milliseconds_and_dates():
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after({}) is None


def test_request_carries_the_sampling_settings():
    seen = []
    with StubServer(responder=lambda messages, params: seen.append(params) or "An answer.") as srv:
        complete(srv, "generate.temperature=0.3", "generate.top_p=0.9", "generate.max_tokens=21")
    assert seen[0]["model"] == "stub-model" and seen[0]["messages"] == MESSAGES
    assert (seen[0]["temperature"], seen[0]["top_p"], seen[0]["max_tokens"]) == (0.3, 0.9, 21)


def test_a_200_that_is_not_a_chat_completion_is_a_one_line_error():
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
                     b'{"oops": 1}')
        await writer.drain()
        writer.close()

    async def go():
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = load_config(None, [f"generate.base_url=http://127.0.0.1:{port}/v1", "generate.api_key=sk-test"])
        backend = OpenAIBackend(cfg.generate)
        try:
            return await backend.complete_one(MESSAGES, Sampling.of(cfg.generate))
        finally:
            await backend.close()
            server.close()

    with pytest.raises(GenerateError, match=r"not a chat completion answer \(KeyError: 'choices'\)") as err:
        asyncio.run(go())
    assert "\n" not in str(err.value)


def test_the_batch_api_comes_from_the_one_backend_factory_with_one_line_errors():
    with StubServer(api_key="sk-test") as srv:
        gen = load_config(None, [f"generate.base_url={srv.base_url}", "generate.model=stub-model",
                                 "generate.api_key=sk-test", "generate.max_retries=0"]).generate
        api = open_backend(gen, batch=True)
        assert isinstance(api, BatchAPI) and api.where == srv.base_url
        line = request_line("row-1", MESSAGES, gen.model, Sampling.of(gen))
        batch = api.create(api.upload("rows.jsonl", (json.dumps(line) + "\n").encode()), "24h", "key-1")
        assert api.retrieve(batch.id).id == batch.id
        assert [b.id for b in api.recent()] == [batch.id]
        wrong = open_backend(gen.model_copy(update={"api_key": SecretStr("sk-wrong")}), batch=True)
        with pytest.raises(GenerateError, match=r"batch API: HTTP 401") as error:
            wrong.retrieve(batch.id)
        assert "\n" not in str(error.value) and "sk-wrong" not in str(error.value)
    with pytest.raises(BatchConnectionError, match="batch API: APIConnectionError"):
        api.retrieve(batch.id)  # the server is gone: no answer, a one-line error of its own kind
    with pytest.raises(GenerateError, match="generate.mode=batch needs generate.backend=openai"):
        open_backend(gen.model_copy(update={"backend": "transformers"}), batch=True)


def test_a_row_that_loops_is_stopped_and_the_rest_go_on():
    """The transformers backend's stopping criterion: a row whose last tokens already stand twice
    earlier stops there (finish_reason length), so a looping row no longer holds its batch."""
    import torch

    from pipeline.llm.backends import LoopStop

    prompt, eos = [7, 7], 0
    looping = prompt + [1, 2, 3, 4] * 6
    varied = prompt + list(range(20, 44))
    ended = prompt + list(range(20, 32)) + [eos] * 12  # finished: its padding repeats
    stop = LoopStop(prompt_length=2, eos={eos}, span=4, every=1)
    done = stop(torch.tensor([looping, varied, ended]), None)
    assert done.tolist() == [True, False, False] and stop.stopped == {0: 24}
    assert stop(torch.tensor([looping + [5], varied + [5], ended + [eos]]), None).tolist() == [True, False, False]
    not_now = LoopStop(prompt_length=2, eos={eos}, span=4, every=5)  # 24 tokens: not a check step
    assert not_now(torch.tensor([looping]), None).tolist() == [False]
