"""Weight-sparse circuits (Gao et al., 2025; docs/method.md §B): binary next-token contrast tasks on Python code,
learned node pruning with mean ablation on any HookedTransformer, weight-sparse training of small models on
the CPython standard library (with a dense twin), circuit edges, and bridges between the twins."""

from cca_tl.interventions import abstopk, text_means
from cca_tl.sparse.bridges import Bridges, bridge_intervention, bridge_locations, bridge_losses, train_bridges
from cca_tl.sparse.prune import (PruneResult, bisect_smallest, calibrate_logits, circuit_diffs, circuit_edges,
                                 faithfulness, gated, heaviside_ste, plot_circuit, prune_nodes)
from cca_tl.sparse.tasks import CODE_TASKS, ContrastExample, code_contrast_set, code_task_examples
from cca_tl.sparse.train import (SparseTrainConfig, TrainedModel, build_model, l0_fraction, python_tokenizer,
                                 sharkfin_lr, sparsify_, stdlib_python_files, stdlib_tokens, token_windows, train_sparse)

__all__ = ["Bridges", "CODE_TASKS", "ContrastExample", "PruneResult", "SparseTrainConfig", "TrainedModel",
           "abstopk", "bisect_smallest", "bridge_intervention", "bridge_locations", "bridge_losses", "build_model",
           "calibrate_logits", "circuit_diffs", "circuit_edges", "code_contrast_set", "code_task_examples", "faithfulness",
           "gated", "heaviside_ste", "l0_fraction", "text_means", "plot_circuit", "prune_nodes", "python_tokenizer",
           "sharkfin_lr", "sparsify_", "stdlib_python_files", "stdlib_tokens", "token_windows", "train_bridges",
           "train_sparse"]
