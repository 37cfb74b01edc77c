"""Weight-sparse training of small HookedTransformers (Gao et al., 2025; docs/method.md §B), on Python source.

The recipe, as the paper states it and sized for a CPU:

- **Architecture**: a TransformerLens model with RMSNorm (zero keeps its meaning in the residual stream),
  small heads (``d_head`` 16), untied embeddings, rotary positions (no positional-embedding matrix).
- **Weight sparsity**: after every optimiser step, every matrix (every parameter with ≥ 2 dims — per layer
  ``W_Q``, ``W_K``, ``W_V``, ``W_O``, ``W_in``, ``W_out``, and ``W_E``, ``W_U``) keeps only its top-``k``
  entries by magnitude, the same fraction for all; that fraction (the L0) is annealed linearly from dense
  to the target between 1 % and 50 % of training (:func:`l0_fraction`). Biases and norm weights stay dense.
- **Activation sparsity**: AbsTopK (keep the ``1/4`` largest-magnitude entries per position, zero the rest)
  after each RMSNorm, after the q/k/v projections, after the MLP non-linearity and at the end of each
  attention and MLP block — as permanent TransformerLens hooks, so every tool (caching, pruning,
  ``run_with_hooks``) sees the sparse model as it is.
- **Optimiser**: Adam with ε = 0.1, gradients normalised to RMS 1 every step (not clipped: always), weight
  decay applied by hand after the step (``p ← p − wd·lr·p``), and the "sharkfin" learning rate
  (:func:`sharkfin_lr`): linear warm-up over 1 %, linear decay to zero, multiplied by ``1/√L0`` so the
  learning rate rises while the weights are being sparsified.
- **Data**: the CPython standard library's own ``.py`` files (offline, real code), with a byte-level BPE
  tokenizer trained on them (:func:`python_tokenizer`); files are split train/held-out by a hash of
  their path.
- A **dense twin** (:func:`train_sparse` with ``cfg.dense()``) has the same architecture and schedule,
  without weight or activation sparsity — the comparison for circuit sizes and the other end of a bridge.

Training writes ``checkpoint.pt`` atomically every ``checkpoint_every`` steps and resumes from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from cca_tl.backend import HookedTransformer, HookedTransformerConfig

from cca_tl._io import atomic_directory, atomic_write_bytes
from cca_tl.interventions import keep_top_k
from cca_tl.validated import Validated, bounded, positive

TOKENIZER_SPECIALS = ("<pad>", "<bos>", "<eos>")


# ----------------------------------------------------------------------------------------------------
# Data: the CPython standard library, and a tokenizer trained on it
# ----------------------------------------------------------------------------------------------------

def stdlib_python_files(split: str = "train", *, held_out_every: int = 20) -> list[Path]:
    """The standard library's ``.py`` files (tests and site-packages excluded), sorted; ``split`` "train"
    or "held_out" (1 in ``held_out_every`` files, chosen by a hash of the relative path)."""
    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be 'train', 'held_out' or 'all', not {split!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3"}
    files = sorted(f for f in root.rglob("*.py") if not skip & set(f.relative_to(root).parts))
    if not files:
        raise FileNotFoundError(f"No .py files under the standard library at {root}")

    def held_out(f: Path) -> bool:
        digest = hashlib.sha1(str(f.relative_to(root)).encode()).digest()
        return int.from_bytes(digest[:4], "little") % held_out_every == 0

    if split == "all":
        return files
    return [f for f in files if held_out(f) == (split == "held_out")]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def python_tokenizer(vocab_size: int = 2048, *, max_chars: int = 6_000_000) -> Any:
    """A byte-level BPE tokenizer with ``vocab_size`` entries trained on the standard library's training
    files (the first ``max_chars`` characters); ``<pad> <bos> <eos>`` are ids 0–2 and BOS is prepended.
    Trained once per Python version and cached under :func:`cca_tl._io.cache_dir`."""
    from transformers import AutoTokenizer

    from cca_tl._io import cache_dir
    from cca_tl.testing import save_bos_tokenizer

    tag = f"pystdlib-bpe{vocab_size}-py{sys.version_info.major}{sys.version_info.minor}-v1"
    target = cache_dir() / "tokenizers" / tag
    if not (target / "tokenizer.json").exists():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        def texts() -> Iterable[str]:
            used = 0
            for f in stdlib_python_files("train"):
                if used >= max_chars:
                    return
                text = _read(f)
                used += len(text)
                yield text

        core = Tokenizer(models.BPE())
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(TOKENIZER_SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        core.train_from_iterator(texts(), trainer)
        save_bos_tokenizer(core, target)
    return AutoTokenizer.from_pretrained(str(target))


def stdlib_tokens(tokenizer: Any, split: str = "train") -> Int[Tensor, "n_tokens"]:
    """Every file of ``split`` tokenised (no specials) and concatenated with ``<eos>`` between files
    (cached next to the tokenizer)."""
    from cca_tl._io import cache_dir

    files = stdlib_python_files(split)
    key = hashlib.sha1(json.dumps([tokenizer.name_or_path, len(tokenizer), [str(f) for f in files]]).encode())
    path = cache_dir() / "token_cache" / f"stdlib-{split}-{key.hexdigest()[:16]}.pt"
    if path.exists():
        return torch.load(path)
    eos = tokenizer.convert_tokens_to_ids("<eos>")
    ids: list[int] = []
    for f in files:
        ids.extend(tokenizer(_read(f), add_special_tokens=False)["input_ids"])
        ids.append(eos)
    tokens = torch.tensor(ids, dtype=torch.int32)
    import io

    buffer = io.BytesIO()
    torch.save(tokens, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return tokens


def token_windows(stream: Int[Tensor, "n_tokens"], n_ctx: int, bos_id: int) -> Int[Tensor, "window n_ctx"]:
    """Cut a token stream into non-overlapping windows of ``n_ctx − 1`` tokens, each led by BOS (the way
    ``model.to_tokens`` presents text)."""
    body = n_ctx - 1
    n = stream.numel() // body
    if n == 0:
        raise ValueError(f"The token stream ({stream.numel()} tokens) is shorter than one window of {n_ctx}.")
    windows = stream[: n * body].reshape(n, body).long()
    return torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), windows], dim=1)


# ----------------------------------------------------------------------------------------------------
# Sparsity: AbsTopK activations, top-k weights, the schedules
# ----------------------------------------------------------------------------------------------------

ACTIVATION_SPARSITY_HOOKS = ("ln1.hook_normalized", "ln2.hook_normalized", "attn.hook_q", "attn.hook_k",
                             "attn.hook_v", "mlp.hook_post", "hook_attn_out", "hook_mlp_out")


def add_abstopk_hooks(model: HookedTransformer, keep_fraction: float,
                      locations: Sequence[str] = ACTIVATION_SPARSITY_HOOKS) -> None:
    """Permanent AbsTopK hooks at ``blocks.{l}.<location>`` for every layer; q/k/v are sparsified over all
    heads' channels together (``[.., head, d_head]`` flattened)."""
    for layer in range(model.cfg.n_layers):
        for location in locations:
            model.add_perma_hook(f"blocks.{layer}.{location}",
                                 keep_top_k(keep_fraction, across_heads=location.startswith("attn.hook_")))


def sparsified_matrices(model: HookedTransformer) -> dict[str, Tensor]:
    """The parameters weight sparsity applies to: every weight matrix (≥ 2 dims; TL's per-head biases
    ``b_Q/b_K/b_V`` are 2-D too but stay dense like every bias)."""
    return {name: p for name, p in model.named_parameters() if p.ndim >= 2 and not name.rsplit(".", 1)[-1].startswith("b_")}


def kept_count(numel: int, fraction: float) -> int:
    """Entries a matrix of ``numel`` keeps at L0 ``fraction`` (at least one)."""
    return max(1, min(numel, round(fraction * numel)))


@torch.no_grad()
def sparsify_(model: HookedTransformer, fraction: float) -> dict[str, int]:
    """Zero all but the top-``k`` entries by magnitude of every matrix, ``k = kept_count(numel, fraction)``
    (ties broken by ``topk``, so exactly ``k`` positions survive). Returns ``k`` per matrix."""
    kept = {}
    for name, p in sparsified_matrices(model).items():
        k = kept_count(p.numel(), fraction)
        kept[name] = k
        if k == p.numel():
            continue
        flat = p.view(-1)
        drop = flat.numel() - k
        if k <= drop:  # top-k is slow for large k on CPU: select whichever side is smaller
            keep = torch.zeros_like(flat, dtype=torch.bool)
            keep[flat.abs().topk(k).indices] = True
            flat.masked_fill_(~keep, 0.0)
        else:
            flat[flat.abs().topk(drop, largest=False).indices] = 0.0
    return kept


def l0_fraction(step: int, total_steps: int, target: float, *, start: float = 0.01, end: float = 0.5) -> float:
    """The kept fraction at ``step``: 1 until ``start·total``, linear to ``target`` at ``end·total``, then
    ``target``."""
    t0, t1 = start * total_steps, end * total_steps
    if step <= t0:
        return 1.0
    if step >= t1:
        return float(target)
    return 1.0 + (target - 1.0) * (step - t0) / (t1 - t0)


def sharkfin_lr(step: int, total_steps: int, base_lr: float, l0: float = 1.0, *, warmup: float = 0.01) -> float:
    """Linear warm-up over ``warmup·total`` steps, linear decay to 0 at the end, times ``1/√L0`` — the
    learning rate grows while the L0 is annealed down, then decays: a shark's fin."""
    w = max(1.0, warmup * total_steps)
    ramp = min(1.0, (step + 1) / w)
    decay = max(0.0, 1.0 - step / total_steps)
    return base_lr * ramp * decay / math.sqrt(l0)


@torch.no_grad()
def normalise_grad_rms_(params: Iterable[Tensor], target: float = 1.0) -> float:
    """Rescale all gradients together so their root-mean-square is ``target``; returns the RMS before."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = sum(float(g.float().pow(2).sum()) for g in grads)
    count = sum(g.numel() for g in grads)
    rms = math.sqrt(total / count)
    if rms > 0 and math.isfinite(rms):
        for g in grads:
            g.mul_(target / rms)
    return rms


# ----------------------------------------------------------------------------------------------------
# Models and training
# ----------------------------------------------------------------------------------------------------

@dataclass
class SparseTrainConfig(Validated):
    """Everything that determines a trained model (saved with it); every field checked when made."""

    n_layers: int = positive(2)
    d_model: int = positive(128)
    n_heads: int = positive(8)
    d_head: int = positive(16)
    d_mlp: int = positive(512)
    n_ctx: int = positive(128)
    vocab_size: int = positive(2048)
    weight_l0: float | None = bounded(1 / 16, above=0, max=1)  # kept share of every matrix at the end; None: dense
    activation_keep: float | None = bounded(0.25, above=0, max=1)  # AbsTopK share; None: no activation sparsity
    steps: int = positive(1500)
    batch_size: int = positive(16)
    lr: float = bounded(4e-3, above=0)
    weight_decay: float = bounded(0.01, min=0)
    adam_eps: float = bounded(0.1, above=0)
    anneal_start: float = bounded(0.01, min=0, max=1)  # shares of the steps
    anneal_end: float = bounded(0.5, min=0, max=1)
    warmup: float = bounded(0.01, min=0, max=1)
    seed: int = 0
    checkpoint_every: int = positive(250)
    name: str = "pystdlib-sparse"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.anneal_end < self.anneal_start:
            raise ValueError(f"anneal_end ({self.anneal_end}) must not come before anneal_start ({self.anneal_start})")

    @property
    def is_sparse(self) -> bool:
        return self.weight_l0 is not None

    def dense(self) -> "SparseTrainConfig":
        """The dense twin: same architecture and schedule, no weight or activation sparsity."""
        return dataclasses.replace(self, weight_l0=None, activation_keep=None,
                                   name=self.name.replace("sparse", "dense") if "sparse" in self.name else self.name + "-dense")

    def model_config(self) -> HookedTransformerConfig:
        return HookedTransformerConfig(
            n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, d_head=self.d_head,
            d_mlp=self.d_mlp, n_ctx=self.n_ctx, d_vocab=self.vocab_size, act_fn="gelu",
            normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=self.d_head,
            model_name=self.name, seed=self.seed, device="cpu", default_prepend_bos=True,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SparseTrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def build_model(cfg: SparseTrainConfig, tokenizer: Any | None = None) -> HookedTransformer:
    """A freshly initialised model for ``cfg`` (AbsTopK hooks attached when ``cfg.activation_keep``)."""
    from cca_tl.provenance import ModelProvenance

    tokenizer = tokenizer if tokenizer is not None else python_tokenizer(cfg.vocab_size)
    if len(tokenizer) != cfg.vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} entries, the config says vocab_size={cfg.vocab_size}.")
    torch.manual_seed(cfg.seed)
    model = HookedTransformer(cfg.model_config(), tokenizer=tokenizer, move_to_device=False)
    if cfg.activation_keep is not None:
        add_abstopk_hooks(model, cfg.activation_keep)
    model.cca_provenance = ModelProvenance(name=cfg.name, source="weight-sparse" if cfg.is_sparse else "dense-twin",
                                           hf_architecture=None, details=cfg.to_dict())
    model.cca_sparse_config = cfg
    return model


@dataclass
class TrainedModel:
    """A trained (sparse or dense) model with its config, loss history and held-out loss."""

    model: HookedTransformer
    config: SparseTrainConfig
    history: pd.DataFrame
    held_out_loss: float
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def nonzero_fraction(self) -> pd.DataFrame:
        """Per matrix: entries, nonzero entries, fraction."""
        rows = [dict(matrix=n, entries=p.numel(), nonzero=int((p != 0).sum())) for n, p in sparsified_matrices(self.model).items()]
        df = pd.DataFrame(rows).set_index("matrix")
        df["fraction"] = df["nonzero"] / df["entries"]
        return df

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_directory(path, overwrite=True) as staging:
            torch.save(self.model.state_dict(), staging / "model.pt")
            (staging / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
            self.history.to_csv(staging / "history.csv", index=False)
            (staging / "summary.json").write_text(json.dumps(dict(held_out_loss=self.held_out_loss,
                                                                   seconds=self.seconds, **self.extra), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TrainedModel":
        path = Path(path)
        if not (path / "model.pt").exists():
            raise FileNotFoundError(f"No trained model in {path} (expected model.pt and config.json).")
        cfg = SparseTrainConfig.from_dict(json.loads((path / "config.json").read_text()))
        model = build_model(cfg)
        model.load_state_dict(torch.load(path / "model.pt"))
        model.eval()
        summary = json.loads((path / "summary.json").read_text())
        return cls(model, cfg, pd.read_csv(path / "history.csv"), summary.pop("held_out_loss"),
                   summary.pop("seconds", 0.0), summary)


@torch.no_grad()
def held_out_loss(model: HookedTransformer, windows: Int[Tensor, "window n_ctx"], *, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over ``windows``."""
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = windows[i: i + batch_size]
        loss = model(batch, return_type="loss", loss_per_token=True)
        total += float(loss.sum())
        count += loss.numel()
    return total / count


def _train_step(model: HookedTransformer, params: list[Tensor], opt: torch.optim.Optimizer, cfg: SparseTrainConfig,
                windows: Int[Tensor, "batch n_ctx"], step: int) -> dict:
    """One step of the recipe (module doc): loss, gradient RMS normalised, Adam at the sharkfin learning
    rate, decoupled weight decay, then the weights cut back to the annealed L0 (sparse models)."""
    l0 = l0_fraction(step, cfg.steps, cfg.weight_l0, start=cfg.anneal_start, end=cfg.anneal_end) if cfg.is_sparse else 1.0
    lr = sharkfin_lr(step, cfg.steps, cfg.lr, l0, warmup=cfg.warmup)
    loss = model(windows, return_type="loss")
    if not torch.isfinite(loss):
        raise FloatingPointError(f"Training loss is {loss.item()} at step {step}; the last checkpoint is kept.")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_rms = normalise_grad_rms_(params)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    with torch.no_grad():
        if cfg.weight_decay:
            for p in params:
                p.mul_(1 - cfg.weight_decay * lr)
    if cfg.is_sparse:
        sparsify_(model, l0)
    return dict(step=step, loss=loss.item(), lr=lr, l0=l0, grad_rms=grad_rms)


def train_sparse(cfg: SparseTrainConfig, out: str | Path | None = None, *, tokenizer: Any | None = None,
                 train_windows: Tensor | None = None, eval_windows: Tensor | None = None,
                 max_eval_windows: int = 64, progress: bool = True,
                 on_step: Callable[[int, HookedTransformer, dict], None] | None = None) -> TrainedModel:
    """Train ``cfg`` (sparse or dense twin) on the standard library; see the module doc for the recipe.

    With ``out``, a checkpoint (model, optimiser, RNG, history) is written atomically every
    ``cfg.checkpoint_every`` steps and a killed run resumes from it; the finished model is saved there.
    A non-finite loss stops training with :class:`FloatingPointError` (the last checkpoint is kept).
    ``on_step(step, model, record)`` is called after every step (logging, checks).
    """
    import time

    from tqdm.auto import tqdm

    tokenizer = tokenizer if tokenizer is not None else python_tokenizer(cfg.vocab_size)
    bos = tokenizer.convert_tokens_to_ids("<bos>")
    if train_windows is None:
        train_windows = token_windows(stdlib_tokens(tokenizer, "train"), cfg.n_ctx, bos)
    if eval_windows is None:
        eval_windows = token_windows(stdlib_tokens(tokenizer, "held_out"), cfg.n_ctx, bos)
    if len(train_windows) == 0:
        raise ValueError("No training windows.")
    out = Path(out) if out is not None else None
    if out is not None and (out / "model.pt").exists():
        done = TrainedModel.load(out)
        if done.config != cfg:
            raise ValueError(f"{out} holds a model trained with a different config; choose another directory.")
        return done

    model = build_model(cfg, tokenizer)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    start, elapsed = 0, 0.0
    checkpoint = out / "checkpoint.pt" if out is not None else None
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if SparseTrainConfig.from_dict(state["config"]) != cfg:
            raise ValueError(f"The checkpoint in {out} was written for a different config.")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        history, start, elapsed = state["history"], state["step"], state["seconds"]

    def save_checkpoint(step: int) -> None:
        import io

        buffer = io.BytesIO()
        torch.save(dict(config=cfg.to_dict(), model=model.state_dict(), optimizer=opt.state_dict(),
                        generator=generator.get_state(), history=history, step=step, seconds=elapsed), buffer)
        atomic_write_bytes(checkpoint, buffer.getvalue())

    t0 = time.perf_counter() - elapsed
    bar = tqdm(range(start, cfg.steps), desc=f"training {cfg.name}", disable=not progress, leave=False)
    for step in bar:
        idx = torch.randint(len(train_windows), (cfg.batch_size,), generator=generator)
        history.append(_train_step(model, params, opt, cfg, train_windows[idx], step))
        if on_step is not None:
            on_step(step, model, history[-1])
        if step % 25 == 0:
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", l0=f"{history[-1]['l0']:.3f}")
        elapsed = time.perf_counter() - t0
        if checkpoint is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_checkpoint(step + 1)
    model.eval()
    result = TrainedModel(model, cfg, pd.DataFrame(history),
                          held_out_loss(model, eval_windows[:max_eval_windows]), time.perf_counter() - t0)
    if out is not None:
        result.save(out)  # replaces the directory, checkpoint included
    return result
