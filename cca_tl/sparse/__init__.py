"""Weight-sparse circuits (Gao et al., 2025; SPEC B): binary next-token contrast tasks on Python code and
learned node pruning with mean ablation on any HookedTransformer. Weight-sparse training and bridges are the
next steps of this subpackage."""

from cca_tl.sparse.prune import (NodeMask, PruneResult, bisect_smallest, calibrate_logits, faithfulness, heaviside_ste,
                                 node_means, plot_circuit, prune_nodes)
from cca_tl.sparse.tasks import CODE_TASKS, ContrastExample, code_contrast_set, code_task_examples

__all__ = ["CODE_TASKS", "ContrastExample", "NodeMask", "PruneResult", "bisect_smallest", "calibrate_logits",
           "code_contrast_set", "code_task_examples", "faithfulness", "heaviside_ste", "node_means", "plot_circuit", "prune_nodes"]
