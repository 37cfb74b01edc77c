"""``ModelSession``: the one owner of a run's model state.

It holds the only copy of the model (on the run's device, in its dtype) and what restoring the unedited
weights needs — nothing more:

* **base slices, not a base copy.** Before an update writes to the model it names the regions it may
  change (:meth:`protect`: per parameter an element mask, or ``None`` for the whole tensor); the session
  keeps the unedited values of exactly those entries. A whole-tensor region (the "all parameters" control)
  is spilled to a scratch file on disk instead of RAM. :meth:`restore` writes them back.
* **freshness from the weights themselves.** Every parameter's version counter (``Tensor._version``, which
  every in-place write bumps) is recorded whenever the model is known to be unedited; :meth:`is_base`
  compares against it, and :meth:`restore` refuses when a parameter changed outside a protected region
  (an edit the session could not undo). Nothing is flagged by hand.
* **no generation twin.** Generation runs on the HookedTransformer itself (:mod:`cca_tl.generation`), so
  there is no second copy of the weights to build, sync or free.
* **the retention reference** is the base model itself, reached by swapping the (small) edited regions
  out and back (:meth:`base_weights`), not a deep copy.

Before this, the main job held the model, a full base state, a deep-copied base model and an fp32 HF twin
(12.4 GB peak RSS on Gemma-3-270M); ``analyses/bench_main_job.py`` measures it now.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import Tensor
from cca_tl.backend import HookedTransformer, parameter_owner

from cca_tl._io import release_freed_memory
from cca_tl.errors import CCAError

Region = Tensor | None  # an element mask over a parameter, or None for all of it


class ModelSession:
    """Loads the model once (lazily) and keeps what restoring its unedited weights needs."""

    def __init__(self, name: str, *, device: str = "auto", dtype: str = "float32", n_devices: int = 1,
                 seed: int = 0, model: HookedTransformer | None = None, base_edit=None,
                 log=lambda text: None, backend: str = "hooked"):
        from cca_tl.devices import resolve_device, resolve_dtype

        self.name, self.seed, self.n_devices, self._log, self.backend = name, seed, n_devices, log, backend
        self.device = resolve_device(device) if model is None else torch.device(model.cfg.device)
        self.dtype = resolve_dtype(dtype, self.device) if model is None else model.cfg.dtype
        self._model = model
        self._base_edit = base_edit  # multi-round CCA: the previous round's edit is part of "base"
        self._saved: list[tuple[str, Region, Tensor | Path]] = []  # base values of protected regions
        self._versions: dict[str, int] = {}
        self._scratch: Path | None = None
        if model is not None:
            if base_edit is not None:
                base_edit.apply(model)
            self._mark_base()

    # -- the model ---------------------------------------------------------------------------------
    @property
    def model(self) -> HookedTransformer:
        if self._model is None:
            from cca_tl.models import load_model

            on = "" if self.backend == "hooked" else f" ({self.backend} backend)"
            self._log(f"loading {self.name} on {self.device} as {str(self.dtype).removeprefix('torch.')}{on}")
            self._model = load_model(self.name, device=self.device, dtype=self.dtype, seed=self.seed,
                                     n_devices=self.n_devices, backend=self.backend)
            if self._base_edit is not None:
                self._base_edit.apply(self._model)
            self._mark_base()
            release_freed_memory()
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def describe(self) -> str:
        """The device in words, as reports and benchmarks record it ("NVIDIA H100 80GB HBM3", "cpu (2
        threads)")."""
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"{self.device.type} ({torch.get_num_threads()} threads)"

    def _params(self) -> dict[str, torch.nn.Parameter]:
        """The weights by the names regions use (TransformerLens names, or the HF checkpoint's on the bridge)."""
        return dict(parameter_owner(self.model).named_parameters())

    def _mark_base(self) -> None:
        self._versions = {n: p._version for n, p in parameter_owner(self._model).named_parameters()}

    def is_base(self) -> bool:
        """True when no parameter was written since the model was loaded or last restored."""
        return self._model is not None and all(p._version == self._versions.get(n)
                                               for n, p in parameter_owner(self._model).named_parameters())

    # -- protect / restore -------------------------------------------------------------------------
    @torch.no_grad()
    def protect(self, regions: Mapping[str, Region]) -> None:
        """Keep the current (unedited) values of these regions so :meth:`restore` can put them back.

        Call before writing to them. Regions already protected are not saved twice (their saved values
        are the unedited ones); protecting a region after it was edited is refused.
        """
        params = self._params()
        for name, region in regions.items():
            if name not in params:
                raise CCAError(f"No parameter {name!r} in {self.name}.")
            param = params[name]
            if param._version != self._versions.get(name) and not self._covered(name, region):
                raise CCAError(f"{name} was changed before it was protected; restore() could not undo that.")
            if self._covered(name, region):
                continue
            if region is None:
                self._saved.append((name, None, self._spill(name, param)))
            else:
                self._saved.append((name, region.clone(), param.detach()[region].clone()))

    def _covered(self, name: str, region: Region) -> bool:
        for saved_name, saved_region, _ in self._saved:
            if saved_name != name:
                continue
            if saved_region is None or (region is not None and bool((region <= saved_region).all())):
                return True
        return False

    def _spill(self, name: str, param: Tensor) -> Path:
        """A whole tensor's values to a scratch file (the "all" control would otherwise double the RAM)."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="cca_tl_session_"))
        path = self._scratch / f"{len(self._saved)}-{name}.pt"
        torch.save(param.detach().cpu().contiguous(), path)
        return path

    @torch.no_grad()
    def restore(self) -> HookedTransformer:
        """Put every protected region back to its unedited values; the model is then the base model."""
        if self._model is None:
            return self.model
        params = self._params()
        # A tied embedding is two parameters over one storage (cca_tl.convert.tie_embedding): protecting
        # either protects both.
        storage = {n: p.untyped_storage().data_ptr() for n, p in params.items()}
        protected = {storage[name] for name, _, _ in self._saved}
        unprotected = [n for n, p in params.items() if p._version != self._versions.get(n) and storage[n] not in protected]
        if unprotected:
            raise CCAError(f"Parameters {unprotected[:4]} were changed without session.protect(); the unedited "
                           "weights cannot be restored. Reload the model (a new session).")
        for name, region, values in reversed(self._saved):
            _write(params[name], region, values)
        self._saved.clear()
        self._clear_scratch()
        self._mark_base()
        return self._model

    def apply(self, edit) -> HookedTransformer:
        """The base model with ``edit`` applied (a :class:`~cca_tl.edits.WeightEdit` or
        :class:`~cca_tl.edits.RegionEdit`: anything that says which regions it ``touched`` and ``apply``s)."""
        model = self.restore()
        self.protect(edit.touched(model))
        edit.apply(model)
        return model

    @contextmanager
    def base_weights(self) -> Iterator[HookedTransformer]:
        """The unedited model for the duration of the block, then the current edit again (retention)."""
        params = self._params()
        edited = [(n, r, params[n].detach()[r].clone() if r is not None else self._spill(n, params[n]))
                  for n, r, _ in self._saved]
        with torch.no_grad():
            for name, region, values in reversed(self._saved):
                _write(params[name], region, values)
        try:
            yield self._model
        finally:
            with torch.no_grad():
                for name, region, values in edited:
                    _write(params[name], region, values)

    # -- lifetime ----------------------------------------------------------------------------------
    def _clear_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def close(self) -> None:
        """Drop the model and every saved value (frees the memory; a later use reloads)."""
        self._model = None
        self._saved.clear()
        self._versions = {}
        self._clear_scratch()

    def __del__(self) -> None:
        if getattr(self, "_scratch", None) is not None:
            self._clear_scratch()


def _write(param: Tensor, region: Region, values: Tensor | Path) -> None:
    if isinstance(values, Path):
        values = torch.load(values, mmap=True)
    if region is None:
        param.copy_(values.to(param.device, param.dtype))
    else:
        param[region] = values.to(param.device, param.dtype)
