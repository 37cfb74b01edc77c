"""Binary next-token contrast tasks on Python code (the sparse-circuits paper's task family).

Each example is a code prompt, the right next token (``target``) and the contrasting one (``alt``):

* ``single_double_quote`` — close a string with the quote that opened it (``'`` vs ``"``);
* ``bracket_counting`` — close a list with ``]]`` or ``]`` by nesting depth;
* ``set_or_string`` — extend a ``set()`` with ``.add`` but a string with `` +=``;
* ``while_return_true`` — ``while True`` takes ``:\\n``, ``return True`` a newline;
* ``list_or_dict`` — a list grows with ``.append``, a dict with ``[``.

:func:`code_contrast_set` tokenises them for a model: the contrast is the first token of each continuation
as the tokenizer produces it *in context* (``tokens(prompt + target)[len(tokens(prompt))]``); examples where
the prompt's tokens change when a continuation is appended, or both continuations start with the same token,
are dropped. The resulting :class:`cca_tl.contrast.ContrastSet` is usable by DCM and by node pruning alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from cca_tl.contrast import ContrastSet

NAMES = ["items", "values", "seen", "names", "result", "parts", "words", "keys", "data", "buffer", "out", "acc"]
WORDS = ["hello", "world", "spam", "eggs", "path", "value", "error", "token", "name", "line", "data", "text"]
FUNCS = ["run", "loop", "check", "serve", "poll", "wait", "main", "step", "work", "tick"]


@dataclass(frozen=True)
class ContrastExample:
    task: str
    prompt: str
    target: str
    alt: str


def _quote(rng: random.Random) -> ContrastExample:
    q, other = rng.choice([("'", '"'), ('"', "'")])
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
    var = rng.choice(NAMES)
    prompt = rng.choice([f"{var} = {q}{words}", f"print({q}{words}", f"{var}.append({q}{words}"])
    return ContrastExample("single_double_quote", prompt, q, other)


def _brackets(rng: random.Random) -> ContrastExample:
    deep = rng.random() < 0.5
    nums = ", ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(1, 4)))
    var = rng.choice(NAMES)
    if deep:
        return ContrastExample("bracket_counting", f"{var} = [[{nums}", "]]", "]")
    return ContrastExample("bracket_counting", f"{var} = [{nums}", "]", "]]")


def _set_or_string(rng: random.Random) -> ContrastExample:
    var, item = rng.choice(NAMES), rng.choice(["item", "x", "word", "part"])
    is_set = rng.random() < 0.5
    init = "set()" if is_set else '""'
    prompt = f"{var} = {init}\nfor {item} in {rng.choice(NAMES)}:\n    {var}"
    return ContrastExample("set_or_string", prompt, ".add" if is_set else " +=", " +=" if is_set else ".add")


def _while_return(rng: random.Random) -> ContrastExample:
    fn = rng.choice(FUNCS)
    if rng.random() < 0.5:
        return ContrastExample("while_return_true", f"def {fn}():\n    while True", ":\n", "\n")
    return ContrastExample("while_return_true", f"def {fn}(x):\n    if x:\n        return True", "\n", ":\n")


def _list_or_dict(rng: random.Random) -> ContrastExample:
    var, key = rng.choice(NAMES), rng.choice(WORDS)
    if rng.random() < 0.5:
        return ContrastExample("list_or_dict", f"{var} = []\nfor {key} in data:\n    {var}", ".append", "[")
    return ContrastExample("list_or_dict", f"{var} = {{}}\nfor {key} in data:\n    {var}", "[", ".append")


CODE_TASKS: dict[str, Callable[[random.Random], ContrastExample]] = {
    "single_double_quote": _quote,
    "bracket_counting": _brackets,
    "set_or_string": _set_or_string,
    "while_return_true": _while_return,
    "list_or_dict": _list_or_dict,
}


def code_task_examples(task: str, n: int, *, seed: int = 0) -> list[ContrastExample]:
    """``n`` seeded examples of one task (duplicates allowed: the templates are small)."""
    if task not in CODE_TASKS:
        raise KeyError(f"Unknown code task {task!r}; choose from {sorted(CODE_TASKS)}")
    if n <= 0:
        raise ValueError("n must be positive")
    rng = random.Random(f"{task}:{seed}")
    return [CODE_TASKS[task](rng) for _ in range(n)]


def code_contrast_set(model, task: str, n: int, *, seed: int = 0, prepend_bos: bool = True) -> ContrastSet:
    """Tokenised examples of ``task`` for ``model``'s tokenizer (see the module docstring for the filter).

    Raises ``ValueError`` when no example survives (the tokenizer splits the targets or merges them with the
    prompt), saying which.
    """
    tok = model.tokenizer
    if tok is None:
        raise ValueError("This model has no tokenizer.")
    prefixes, desired, undesired, rejected = [], [], [], []
    for ex in code_task_examples(task, n, seed=seed):
        ids = tok.encode(ex.prompt, add_special_tokens=False)
        with_target = tok.encode(ex.prompt + ex.target, add_special_tokens=False)
        with_alt = tok.encode(ex.prompt + ex.alt, add_special_tokens=False)
        n_ids = len(ids)
        usable = (with_target[:n_ids] == ids and with_alt[:n_ids] == ids and len(with_target) > n_ids
                  and len(with_alt) > n_ids and with_target[n_ids] != with_alt[n_ids])
        if not usable:
            rejected.append(ex)
            continue
        bos = [tok.bos_token_id] if prepend_bos and tok.bos_token_id is not None else []
        prefixes.append(bos + ids)
        desired.append(with_target[n_ids])  # the first token of each continuation, as tokenised in context
        undesired.append(with_alt[n_ids])
    if not prefixes:
        ex = rejected[0]
        raise ValueError(f"No {task} example is usable with this tokenizer: e.g. target {ex.target!r} -> "
                         f"{[tok.decode([i]) for i in tok.encode(ex.target, add_special_tokens=False)]}, alt "
                         f"{ex.alt!r} -> {[tok.decode([i]) for i in tok.encode(ex.alt, add_special_tokens=False)]}")
    return ContrastSet(prefixes, desired, undesired)
