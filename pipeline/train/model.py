"""The model: a Llama-style causal LM from config, its FLOPs per token, and MFU against a peak table."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from pipeline.train.config import ModelConfig

MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4, "intermediate_size": 128,
             "max_position_embeddings": 1024},
    "small": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 4, "intermediate_size": 704,
              "max_position_embeddings": 1024},
    # ~110M parameters with a 32k vocab and tied embeddings (GPT-2 small shape)
    "100m": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "num_kv_heads": 12,
             "intermediate_size": 2048, "max_position_embeddings": 2048},
}

# Dense bf16 tensor-core peak FLOP/s per GPU (no sparsity), matched by substring of the device name.
PEAK_FLOPS: list[tuple[str, float]] = [
    ("H200", 989e12), ("H100", 989e12), ("H800", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("A10G", 125e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12),
    ("T4", 65e12),
]


def model_shape(cfg: ModelConfig) -> dict[str, int]:
    shape = dict(MODEL_PRESETS[cfg.preset])
    for k in shape:
        if getattr(cfg, k) is not None:
            shape[k] = getattr(cfg, k)
    return shape


def build_model(cfg: ModelConfig, tok, seed: int) -> LlamaForCausalLM:
    """A freshly initialised Llama causal LM with SDPA attention, sized for ``tok``."""
    s = model_shape(cfg)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
        num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
        num_key_value_heads=s["num_kv_heads"], max_position_embeddings=s["max_position_embeddings"],
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=cfg.preset == "100m", attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def flops_per_token(model: PreTrainedModel, seq_len: int) -> float:
    """Training FLOPs per token: 6 x non-embedding parameters + attention (12 x layers x width x T)."""
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())
    # the embedding lookup is free; with tied weights the same matrix still costs a matmul as the head
    n_embed = 0 if c.tie_word_embeddings else model.get_input_embeddings().weight.numel()
    return 6 * (n_params - n_embed) + 12 * c.num_hidden_layers * c.hidden_size * seq_len


def peak_flops(device: torch.device) -> float | None:
    """bf16 peak of the GPU from the table; None on CPU or an unknown GPU (then no MFU is reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_FLOPS:
        if key in name:
            return peak
    return None
