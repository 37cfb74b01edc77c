"""cca_tl — circuit-targeted fine-tuning on TransformerLens.

The package reads as the pipeline: ``models → components → tasks → traces → localize → dcm → update →
evaluate → analysis → export`` (plus ``sparse`` for weight-sparse circuits). Implemented so far: the
foundation (models, components, export) and the CCA core (dcm, update; the update also as reference-answer
fine-tuning and on LoRA factors, for comparisons at a matched budget):

>>> import cca_tl
>>> model = cca_tl.load_model()                       # Gemma-3-270M, offline, no weight processing
>>> cca_tl.component_table(model)                      # layer x kind component counts
>>> mask = cca_tl.ComponentMask.from_components(model, [cca_tl.Component("q", 3, 1)])
>>> data = cca_tl.ContrastSet.from_texts(model, prefixes, desired, undesired)
>>> result = cca_tl.train_dcm(model, data, lam=1e-3)     # binary ComponentMask + history DataFrame
>>> cca_tl.targeted_update(model, data, result.mask, lr=1e-3)
>>> answers = cca_tl.AnswerSet.from_problems(model, problems, prompt_fn)   # reference solutions
>>> cca_tl.train_update(model, answers, result.mask, objective="answer", params="mask", optimizer="adamw")
>>> cca_tl.export_hf(model, "edited-gemma")            # verified HF directory
"""

import warnings

# Importing TransformerLens imports tqdm.auto, which in a Jupyter kernel without ipywidgets warns "IProgress not
# found" and falls back to text bars. Text bars are what the package wants (they also read in committed
# notebook outputs, where widget bars do not render), so that one warning is silenced; with ipywidgets
# installed tqdm.auto still draws widget bars.
warnings.filterwarnings("ignore", message="IProgress not found")

from cca_tl.components import ALL_KINDS, DEFAULT_KINDS, Component, ComponentRegistry, Kind, ModelIdentity, ParamSlice
from cca_tl.component_mask import ComponentMask, component_table
from cca_tl.contrast import ContrastSet, two_logit_diff
from cca_tl.dcm import DCMConfig, DCMGains, DCMResult, lambda_sweep, train_dcm
from cca_tl.errors import CCAError, ExportError, MaskMismatchError, ModelLoadError, NonFiniteLossError
from cca_tl.export import ExportReport, export_hf, hf_state_dict, max_logit_diff
from cca_tl.models import DEFAULT_MODEL, known_models, load_model
from cca_tl.provenance import provenance
from cca_tl.testing import tiny_model
from cca_tl.answers import AnswerSet
from cca_tl.update import VARIANTS, UpdateConfig, UpdateResult, targeted_update, train_update

__version__ = "0.1.0"

__all__ = [
    "ALL_KINDS", "DEFAULT_KINDS", "DEFAULT_MODEL", "CCAError", "Component", "ComponentMask",
    "ComponentRegistry", "ExportError", "ExportReport", "Kind", "MaskMismatchError", "ModelIdentity",
    "ModelLoadError", "ParamSlice", "component_table", "export_hf", "hf_state_dict", "known_models",
    "load_model", "max_logit_diff", "provenance", "tiny_model",
    "ContrastSet", "DCMConfig", "DCMGains", "DCMResult", "NonFiniteLossError", "lambda_sweep", "train_dcm", "two_logit_diff",
    "AnswerSet", "UpdateConfig", "UpdateResult", "VARIANTS", "targeted_update", "train_update",
]


def __getattr__(name: str):
    """``cca_tl.DCMMask`` (now ``DCMGains``) for one version."""
    if name == "DCMMask":
        from cca_tl import dcm

        return dcm.DCMMask  # warns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
