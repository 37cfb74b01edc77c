"""Stage ``dcm``: a sparse mask over heads and neurons learned on the train localization records."""

from __future__ import annotations

from cca_tl._io import atomic_directory
from cca_tl.errors import EmptyMaskError
from cca_tl.pipeline.stage import Stage


def run(run) -> dict:
    from cca_tl.dcm import train_dcm

    cfg = run.config
    result = train_dcm(run.session.restore(), run.contrast("train"), **cfg.dcm.train_kwargs(), seed=cfg.seed,
                       progress=run.progress)
    with atomic_directory(run.dir / "dcm", overwrite=True) as staging:
        result.save(staging)
    if result.mask.count() == 0:
        raise EmptyMaskError(
            f"DCM at lam={cfg.dcm.lam} selected no component (the mask is in {run.dir / 'dcm'}): there is nothing "
            f"to update. Lower it (e.g. --set dcm.lam={cfg.dcm.lam / 3:.2g}) or train DCM longer (dcm.epochs).")
    return dict(selected=result.mask.count(), by_kind=result.mask.counts_by_kind(),
                pct_components=100 * result.mask.fraction_components(), stopped=result.stopped)


STAGE = Stage("dcm", ("dcm",), run)
