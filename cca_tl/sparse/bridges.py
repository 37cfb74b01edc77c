"""Bridges between a dense model and its weight-sparse twin (Gao et al., 2025; docs/method.md §B).

At every bridge location (the residual stream before each sublayer — ``hook_resid_pre`` and
``hook_resid_mid`` of every block — and after the last block) an **encoder** maps dense → sparse residual
(linear, then AbsTopK like the sparse model's own activations) and a **decoder** maps sparse → dense
(linear). The loss:

- **NMSE** of both directions: ``‖enc(h_dense) − h_sparse‖² / ‖h_sparse‖²`` and the decoder's mirror;
- **KL(dense → sparse)**: the dense model runs to a location, its residual is encoded and the *sparse*
  model finishes the forward pass;
- **KL(sparse → dense)**: the sparse residual is decoded and the *dense* model finishes.

Both KL terms are measured against the dense model's next-token distribution (both models are frozen here;
the paper trains bridges together with the sparse model). With identical models and identity maps every
term is exactly 0 (tested).

The point of a bridge: an intervention found on a legible sparse-model node can be carried to the dense
model — the change it makes to the sparse residual is decoded (the decoder is linear, so only the
difference matters) and added to the dense residual (:func:`bridge_intervention`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from cca_tl.backend import HookedTransformer

from cca_tl.contrast import ContrastSet, pad_token_id, two_logit_diff
from cca_tl.params import trainable
from cca_tl.interventions import abstopk, add_at, capture_at, replace_at


def bridge_locations(n_layers: int) -> list[str]:
    """Residual-stream hook names before every sublayer, and after the last block."""
    names = []
    for layer in range(n_layers):
        names += [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_mid"]
    return names + [f"blocks.{n_layers - 1}.hook_resid_post"]


class Bridges(nn.Module):
    """One encoder (dense → sparse, linear + AbsTopK) and one decoder (sparse → dense, linear) per location."""

    def __init__(self, d_dense: int, d_sparse: int, locations: Sequence[str], *, keep_fraction: float | None = 0.25):
        super().__init__()
        self.locations = list(locations)
        self.keep_fraction = keep_fraction
        self.encoders = nn.ModuleList(nn.Linear(d_dense, d_sparse) for _ in self.locations)
        self.decoders = nn.ModuleList(nn.Linear(d_sparse, d_dense) for _ in self.locations)

    @classmethod
    def between(cls, dense: HookedTransformer, sparse: HookedTransformer, *, keep_fraction: float | None = 0.25) -> "Bridges":
        if dense.cfg.n_layers != sparse.cfg.n_layers:
            raise ValueError(f"Bridges need twins with the same number of layers "
                             f"(dense {dense.cfg.n_layers}, sparse {sparse.cfg.n_layers}).")
        if dense.cfg.d_vocab != sparse.cfg.d_vocab:
            raise ValueError("Bridged models must share a vocabulary.")
        return cls(dense.cfg.d_model, sparse.cfg.d_model, bridge_locations(dense.cfg.n_layers), keep_fraction=keep_fraction)

    @classmethod
    def identity(cls, d_model: int, locations: Sequence[str]) -> "Bridges":
        """Identity encoders and decoders, no AbsTopK (the ``KL = 0`` reference)."""
        bridges = cls(d_model, d_model, locations, keep_fraction=None)
        with torch.no_grad():
            for lin in (*bridges.encoders, *bridges.decoders):
                lin.weight.copy_(torch.eye(d_model))
                lin.bias.zero_()
        return bridges

    def index(self, location: str) -> int:
        try:
            return self.locations.index(location)
        except ValueError:
            raise KeyError(f"{location!r} is not a bridge location; they are {self.locations}") from None

    def encode(self, i: int, h: Float[Tensor, "... d_dense"]) -> Float[Tensor, "... d_sparse"]:
        z = self.encoders[i](h)
        if self.keep_fraction is None:
            return z
        return abstopk(z, max(1, round(self.keep_fraction * z.shape[-1])))

    def decode(self, i: int, h: Float[Tensor, "... d_sparse"]) -> Float[Tensor, "... d_dense"]:
        return self.decoders[i](h)


def _nmse(pred: Tensor, target: Tensor) -> Tensor:
    return (pred - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def _kl(target_logits: Tensor, logits: Tensor) -> Tensor:
    """Mean over positions of KL(softmax(target) ‖ softmax(logits)), nats."""
    logp = torch.log_softmax(target_logits.float(), -1)
    logq = torch.log_softmax(logits.float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def bridge_losses(dense: HookedTransformer, sparse: HookedTransformer, bridges: Bridges,
                  tokens: Int[Tensor, "batch pos"], *, locations: Sequence[str] | None = None) -> dict[str, Tensor]:
    """NMSE (both directions) and the two hybrid KL terms, averaged over ``locations`` (default: all)."""
    locations = list(locations) if locations is not None else bridges.locations
    with torch.no_grad():
        dense_logits, dense_cache = dense.run_with_cache(tokens, names_filter=lambda n: n in locations)
        _, sparse_cache = sparse.run_with_cache(tokens, names_filter=lambda n: n in locations)
    nmse = kl_d2s = kl_s2d = torch.zeros(())
    for loc in locations:
        i = bridges.index(loc)
        h_d, h_s = dense_cache[loc], sparse_cache[loc]
        enc, dec = bridges.encode(i, h_d), bridges.decode(i, h_s)
        nmse = nmse + _nmse(enc, h_s) + _nmse(dec, h_d)
        kl_d2s = kl_d2s + _kl(dense_logits, sparse.run_with_hooks(tokens, fwd_hooks=[replace_at(loc, enc)]))
        kl_s2d = kl_s2d + _kl(dense_logits, dense.run_with_hooks(tokens, fwd_hooks=[replace_at(loc, dec)]))
    n = len(locations)
    out = dict(nmse=nmse / n, kl_dense_to_sparse=kl_d2s / n, kl_sparse_to_dense=kl_s2d / n)
    out["total"] = out["nmse"] + out["kl_dense_to_sparse"] + out["kl_sparse_to_dense"]
    return out


@dataclass
class BridgeTraining:
    bridges: Bridges
    history: pd.DataFrame
    final: dict[str, float]


def train_bridges(dense: HookedTransformer, sparse: HookedTransformer, windows: Int[Tensor, "window pos"], *,
                  steps: int = 200, batch_size: int = 8, lr: float = 3e-3, keep_fraction: float | None = 0.25,
                  eval_windows: Tensor | None = None, seed: int = 0, progress: bool = True) -> BridgeTraining:
    """Train bridges between frozen twins on token ``windows`` (Adam); the models' weights are untouched.
    Encoders start at the least-squares map dense → sparse on the first batch (decoders the reverse), so the
    KL terms start from a sensible hybrid."""
    from tqdm.auto import tqdm

    if len(windows) == 0:
        raise ValueError("No windows to train bridges on.")
    torch.manual_seed(seed)
    bridges = Bridges.between(dense, sparse, keep_fraction=keep_fraction)
    generator = torch.Generator().manual_seed(seed)
    _least_squares_init_(bridges, dense, sparse, windows[:batch_size * 4])
    opt = torch.optim.Adam(bridges.parameters(), lr=lr)
    history = []
    with trainable(dense, sparse):  # both models are read through; only the bridges train
        for step in tqdm(range(steps), desc="bridges", disable=not progress, leave=False):
            idx = torch.randint(len(windows), (batch_size,), generator=generator)
            losses = bridge_losses(dense, sparse, bridges, windows[idx])
            if not torch.isfinite(losses["total"]):
                raise FloatingPointError(f"Bridge loss is {losses['total'].item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
            history.append(dict(step=step, **{k: v.item() for k, v in losses.items()}))
    evaluation = eval_windows if eval_windows is not None else windows[:batch_size]
    with torch.no_grad():
        final = {k: v.item() for k, v in bridge_losses(dense, sparse, bridges, evaluation).items()}
    return BridgeTraining(bridges, pd.DataFrame(history), final)


@torch.no_grad()
def _least_squares_init_(bridges: Bridges, dense: HookedTransformer, sparse: HookedTransformer, tokens: Tensor) -> None:
    names = set(bridges.locations)
    _, dc = dense.run_with_cache(tokens, names_filter=lambda n: n in names)
    _, sc = sparse.run_with_cache(tokens, names_filter=lambda n: n in names)
    for i, loc in enumerate(bridges.locations):
        x_d = dc[loc].reshape(-1, dc[loc].shape[-1]).double()
        x_s = sc[loc].reshape(-1, sc[loc].shape[-1]).double()
        for lin, src, dst in ((bridges.encoders[i], x_d, x_s), (bridges.decoders[i], x_s, x_d)):
            a = torch.cat([src, torch.ones(len(src), 1, dtype=src.dtype)], 1)
            sol = torch.linalg.lstsq(a, dst, driver="gelsd").solution  # [d_src + 1, d_dst]
            lin.weight.copy_(sol[:-1].T.float())
            lin.bias.copy_(sol[-1].float())


@torch.no_grad()
def bridge_intervention(dense: HookedTransformer, sparse: HookedTransformer, bridges: Bridges, data: ContrastSet,
                        location: str, sparse_hooks: Sequence[tuple[str, Callable]], *,
                        batch_size: int = 16) -> pd.DataFrame:
    """Carry an intervention on the sparse model to the dense model through the bridge at ``location``.

    ``sparse_hooks`` edit the sparse model upstream of ``location`` (e.g. mean-ablate one node). The change
    they make to the sparse residual there, decoded (``W_dec · Δh_sparse``), is added to the dense residual at
    the same location. Per record: logit differences (target − alt) of both models, clean and intervened.
    """
    i = bridges.index(location)
    w_dec = bridges.decoders[i].weight  # [d_dense, d_sparse]
    rows = []
    pad = pad_token_id(sparse)
    for batch in data.batches(batch_size, pad_id=pad, device=sparse.cfg.device):
        captured: dict[str, Tensor] = {}
        sparse_clean = two_logit_diff(sparse, batch, [capture_at(location, captured, "clean")])
        sparse_edit = two_logit_diff(sparse, batch, [*sparse_hooks, capture_at(location, captured, "edit")])
        delta_dense = (captured["edit"] - captured["clean"]) @ w_dec.T
        dense_clean = two_logit_diff(dense, batch)
        dense_edit = two_logit_diff(dense, batch, [add_at(location, delta_dense)])
        for values in zip(sparse_clean.tolist(), sparse_edit.tolist(), dense_clean.tolist(), dense_edit.tolist()):
            rows.append(dict(zip(("sparse_clean", "sparse_intervened", "dense_clean", "dense_bridged"), values)))
    return pd.DataFrame(rows)
