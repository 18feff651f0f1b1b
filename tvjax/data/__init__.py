"""Tasks, prompt building and tokenisation."""

import warnings

from tvjax.data.prompts import DEFAULT_TEMPLATE, Prompt, Template, build_texts, tokenize
from tvjax.data.tasks import Task, TaskError, builtin_names, load_task, read_pairs

__all__ = ["Task", "TaskError", "load_task", "read_pairs", "builtin_names", "Template", "DEFAULT_TEMPLATE",
           "Prompt", "build_texts", "tokenize", "prompts_for"]


def prompts_for(tokenizer, task: Task, split: str, shots: int, *, template: Template = Template(),
                seed: int = 0, limit: int | None = None, queries=None):
    """Tokenised prompts for `task`'s `split` (or `queries`), with `shots` train demonstrations each.

    Returns `(prompts, skipped)`; `skipped` lists pairs whose answer does not tokenise
    (with the reason); they are reported with a warning, and none left is an error.
    """
    task.require(shots)
    queries = list(task.split(split) if queries is None else queries)[:limit]
    prompts, skipped = tokenize(tokenizer, build_texts(template, queries, shots, task.train, seed), template)
    if skipped:
        examples = "; ".join(f"{pair!r}: {reason}" for pair, reason in skipped[:3])
        warnings.warn(f"task {task.name!r} ({split}): {len(skipped)} of {len(queries)} pairs skipped, "
                      f"their answers do not tokenise, e.g. {examples}", stacklevel=2)
    if not prompts:
        raise TaskError(f"task {task.name!r} ({split}): no pair has an answer that tokenises")
    return prompts, skipped
