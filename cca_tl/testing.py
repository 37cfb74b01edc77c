"""Tiny seeded models of every supported HF family, for tests and examples (they are real architectures,
so they convert, edit and export like the real models), and the 256-character tokenizer they carry.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from cca_tl.backend import HookedTransformer, HookedTransformerConfig

from cca_tl._io import atomic_directory, cache_dir
from cca_tl.bridge import model_from_hf
from cca_tl.errors import ModelLoadError
from cca_tl.arch import FAMILIES
from cca_tl.provenance import ModelProvenance

#: Seeded random models of every supported HF family (for tests and examples; they export).
TINY_ARCHITECTURES = ("tiny-gemma3", "tiny-gemma2", "tiny-olmo2", "tiny-qwen2", "tiny-qwen3", "tiny-llama",
                      "tiny-mistral", "tiny-gpt2", "tiny-pythia")


def _alternating(n_layers: int) -> list[str]:
    """Gemma's layer pattern in a small model: sliding window on even layers, full attention on odd."""
    return ["full_attention" if (i + 1) % 2 == 0 else "sliding_attention" for i in range(n_layers)]


def _tiny_hf_config(arch: str, overrides: dict[str, Any]) -> Any:
    import transformers as tf

    common = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256)
    n_layers = overrides.get("num_hidden_layers", common["num_hidden_layers"])
    gemma = dict(common, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                 layer_types=_alternating(n_layers), tie_word_embeddings=True)
    table: dict[str, tuple[str, str, dict[str, Any]]] = {
        "tiny-gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", gemma),
        # Gemma-2: soft-capping on (TL and HF must agree on both caps) and a non-default query scale
        "tiny-gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
                        dict(gemma, num_key_value_heads=2, query_pre_attn_scalar=12, attn_logit_softcapping=5.0,
                             final_logit_softcapping=3.0)),
        "tiny-olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(common, num_key_value_heads=4,
                                                               tie_word_embeddings=False)),
        "tiny-qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(common, num_key_value_heads=2,
                                                               tie_word_embeddings=False)),
        "tiny-qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(common, num_key_value_heads=2, head_dim=16,
                                                               tie_word_embeddings=True)),
        "tiny-llama": ("LlamaConfig", "LlamaForCausalLM", dict(common, num_key_value_heads=4,
                                                               tie_word_embeddings=False)),
        "tiny-mistral": ("MistralConfig", "MistralForCausalLM", dict(common, num_key_value_heads=2,
                                                                     sliding_window=None, tie_word_embeddings=False)),
        "tiny-gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=256, n_embd=64, n_head=4, n_layer=2,
                                                            n_positions=256, tie_word_embeddings=True)),
        # Pythia: fused per-head qkv, a quarter of each head rotary, parallel attention and MLP
        "tiny-pythia": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                        dict(common, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False)),
    }
    if arch not in table:
        raise ModelLoadError(f"Unknown tiny model {arch!r}; choose one of {', '.join(TINY_ARCHITECTURES)}")
    config_class, class_name, fields = table[arch]
    overrides = dict(overrides)
    if arch == "tiny-gpt2" and "num_hidden_layers" in overrides:  # GPT-2 names it n_layer
        overrides["n_layer"] = overrides.pop("num_hidden_layers")
    config = getattr(tf, config_class)(**dict(fields, **overrides))
    config.architectures = [class_name]
    return config


@torch.no_grad()
def tiny_hf_model(arch: str = "tiny-gemma3", *, seed: int = 0, **overrides: Any) -> Any:
    """A seeded random HF causal LM with a small config. Norm weights and biases are randomised too,
    so weight conversions are exercised in full (HF initialises them to constants). Norm scales stay
    near 1 (Gemma stores ``scale - 1``, so near 0 there): near-zero scales would make OLMo-2's post-norms
    erase every block and leave a model with no signal to localise."""
    from transformers import AutoModelForCausalLM


    config = _tiny_hf_config(arch, overrides)
    torch.manual_seed(seed)
    hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    unit_scale = 0.0 if FAMILIES[config.architectures[0]].norm_offset else 1.0
    generator = torch.Generator().manual_seed(seed + 1)
    for param_name, param in hf_model.named_parameters():
        if param_name.endswith(".bias"):
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
        elif "norm" in param_name or ".ln_" in param_name:
            param.copy_(unit_scale + 0.1 * torch.randn(param.shape, generator=generator))
    return hf_model.eval()


CHAR_TOKENIZER_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


def save_bos_tokenizer(core: Any, target: Path, **specials: str) -> None:
    """Wrap a ``tokenizers.Tokenizer`` whose id 1 is ``<bos>`` (prepended to every text) as a transformers
    fast tokenizer and save it atomically to ``target`` (TransformerLens re-loads tokenizers from a directory).
    A concurrent process that saved first wins; its copy is identical."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    core.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                        special_tokens=[("<bos>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", add_bos_token=True, **specials)
    try:
        with atomic_directory(target, overwrite=True) as staging:
            tokenizer.save_pretrained(str(staging))
    except OSError:  # another process won the race: use its copy
        pass


def char_tokenizer() -> Any:
    """A 256-entry character tokenizer for tiny test models: ids 0–3 are ``<pad> <bos> <eos> <unk>``, id
    ``i ≥ 4`` is the character ``chr(i)``; BOS is prepended. Built once and saved under the cache dir
    (TransformerLens re-loads tokenizers from a directory)."""
    from transformers import AutoTokenizer

    target = cache_dir() / "tokenizers" / "char256-v1"
    if not (target / "tokenizer.json").exists():
        from tokenizers import Tokenizer, decoders, models

        vocab = {tok: i for i, tok in enumerate(CHAR_TOKENIZER_SPECIALS)}
        vocab.update({chr(i): i for i in range(len(CHAR_TOKENIZER_SPECIALS), 256)})
        core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        core.decoder = decoders.Fuse()
        save_bos_tokenizer(core, target, unk_token="<unk>")
    return AutoTokenizer.from_pretrained(str(target))


def tiny_model(arch: str = "tiny-gemma3", *, seed: int = 0, **overrides: Any) -> HookedTransformer:
    """A seeded random HookedTransformer of a real HF architecture (exportable). With the default
    256-token vocabulary it carries :func:`char_tokenizer`, so the text pipeline runs on it."""
    hf_model = tiny_hf_model(arch, seed=seed, **overrides)
    tokenizer = char_tokenizer() if hf_model.config.vocab_size == 256 else None
    return model_from_hf(hf_model, tokenizer, name=arch, source="tiny-hf", details={"seed": seed})


def tiny_bridge(arch: str = "tiny-gemma3", *, seed: int = 0, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> Any:
    """The same tiny model as :func:`tiny_model` behind a TransformerLens 4 bridge (``backend="bridge"``)."""
    hf_model = tiny_hf_model(arch, seed=seed)
    tokenizer = char_tokenizer() if hf_model.config.vocab_size == 256 else None
    return model_from_hf(hf_model, tokenizer, backend="bridge", name=arch, source="tiny-hf", dtype=dtype,
                         device=device, details={"seed": seed})


def tiny_tl_model(cfg: HookedTransformerConfig | dict[str, Any], *, seed: int = 0) -> HookedTransformer:
    """A seeded random pure-TransformerLens model from a config (no HF counterpart, not exportable)."""
    if isinstance(cfg, dict):
        cfg = HookedTransformerConfig(**cfg)
    cfg = copy.deepcopy(cfg)
    cfg.seed = seed
    cfg.init_weights = True
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, move_to_device=False)
    with torch.no_grad():  # TL zero-initialises biases and sets norms to 1: randomise them for real tests
        generator = torch.Generator().manual_seed(seed + 1)
        for param_name, param in model.named_parameters():
            if ".b_" in param_name or param_name.endswith(".w"):
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    model.eval()
    model.cca_provenance = ModelProvenance(
        name=cfg.model_name, source="tiny-tl", hf_architecture=None, details={"seed": seed}
    )
    return model
