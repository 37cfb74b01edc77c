"""Tasks: GSM-Symbolic (offline, 100 English templates) and synthetic multi-step arithmetic families.

A :class:`Problem` is one instance of one template. Splits are per template (52 / 8 / 40 % of instances,
seeded). Prompts: the authors' 8-shot chain-of-thought prompt (raw text) and a chat-template zero-shot
prompt for instruct models. Accuracy is the mean over templates of per-template accuracy (docs/method.md §A1).

One module per idea: :mod:`~cca_tl.tasks.problems` (the problem, splits), :mod:`~cca_tl.tasks.gsm`
(GSM-Symbolic), :mod:`~cca_tl.tasks.synthetic` (the arithmetic and two-step families, new-fact test sets),
:mod:`~cca_tl.tasks.prompts` (exemplars, few-shot and chat prompts), :mod:`~cca_tl.tasks.grading`
(answers, correctness, macro accuracy). Every public name is also importable from ``cca_tl.tasks``.
"""

from cca_tl.tasks.problems import Problem, split_problems, template_seed
from cca_tl.tasks.grading import extract_answer, is_correct, macro_accuracy, parse_number, weak_templates
from cca_tl.tasks.gsm import (SLOW_TEMPLATES, constrained_options, draw_constrained, gsm_clauses, gsm_symbolic,
                              gsm_symbolic_hub, gsm_template_ids, gsm_templates, sample_by_rejection)
from cca_tl.tasks.synthetic import (ARITHMETIC_EXEMPLARS, ARITHMETIC_TEMPLATES, TWO_STEP_EXEMPLARS, TWO_STEP_TEMPLATES,
                                    arithmetic_problems, new_fact_problems, two_step_problems)
from cca_tl.tasks.prompts import EXEMPLARS, GSM8K_EXEMPLARS, INSTRUCTION, chat_prompt, few_shot_prompt

__all__ = [
    "ARITHMETIC_EXEMPLARS", "ARITHMETIC_TEMPLATES", "EXEMPLARS", "GSM8K_EXEMPLARS", "INSTRUCTION", "Problem",
    "SLOW_TEMPLATES", "TWO_STEP_EXEMPLARS", "TWO_STEP_TEMPLATES", "arithmetic_problems", "chat_prompt",
    "constrained_options", "draw_constrained", "extract_answer", "few_shot_prompt", "gsm_clauses",
    "gsm_symbolic", "gsm_symbolic_hub", "gsm_template_ids", "gsm_templates", "is_correct", "macro_accuracy",
    "new_fact_problems", "parse_number", "sample_by_rejection", "split_problems", "template_seed",
    "two_step_problems", "weak_templates",
]
