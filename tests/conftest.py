"""Shared fixtures. Everything is made locally: the Hub is never reached (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Realistic sentences: fastText and BPE training misbehave on degenerate word lists.
SENTENCES = [
    "Photosynthesis is the process by which green plants turn sunlight, water and carbon dioxide into sugar.",
    "A prime number has exactly two divisors: one and itself, so seven is prime but nine is not.",
    "The French Revolution began in 1789 and changed how Europeans thought about power and rights.",
    "To solve a linear equation, isolate the variable by doing the same operation on both sides.",
    "Once upon a time a small dog found a shiny red ball in the garden and wanted to share it.",
    "Student: Why is the sky blue? Teacher: Sunlight scatters off air molecules, and blue scatters most.",
    "Buy cheap watches now! Limited offer, click here to win a free prize and subscribe today.",
    "Cookies help us deliver our services. By using our services, you agree to our use of cookies.",
    "In Python, a list comprehension builds a new list by applying an expression to each item.",
    "Newton's second law says that force equals mass times acceleration, written F = m a.",
    "The mitochondria produce most of the chemical energy that a cell needs to power its reactions.",
    "Our store opens at nine and closes at five; free parking is available behind the building.",
]

@contextmanager
def holding_run_dir(run_dir: Path, command: str) -> Iterator[int]:
    """Another live process holds ``run_dir``'s lock as a running ``command`` would; yields its pid."""
    code = ("import sys; from pipeline.runlock import run_lock\n"
            f"with run_lock({str(run_dir)!r}, {command!r}):\n"
            "    print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_llama(path: Path, vocab_size: int = 512) -> Path:
    """A random 2-layer, 64-dim LlamaForCausalLM with a BPE tokenizer trained here, saved to ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = fast.pad_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny random Llama chat model with its tokenizer (AutoModel/AutoTokenizer load it)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def scheduler() -> Iterator[str]:
    """Address of one real LocalCluster of two worker processes, as ``dask_client`` starts, shared by
    the engine and generate tests (starting one costs seconds)."""
    from pipeline.cluster import local_cluster

    with local_cluster(workers=2) as cluster:
        yield cluster.scheduler_address
