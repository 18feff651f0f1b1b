"""Accuracy on a task: zero-shot, K-shot ICL, or zero-shot with an intervention.

Three scores per prompt, all from one batched greedy generation: first-token accuracy
(the first generated token is the answer's first token), exact match (the first line of
the generation, stripped, equals the answer) and contains (the stripped generation begins
with the answer, whatever follows it). `first_token_only` scores the first token alone
without generating (`first_token_scores`: the prompts' prefixes run once, then only the
last prompt token under each intervention).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from tvjax.batching import bucket_length, chunks, pad_id, pad_left
from tvjax.data import Task, Template, prompts_for
from tvjax.fields import COUNT, NON_NEGATIVE, check_value, optional
from tvjax.generation import generate, until_eos
from tvjax.interventions import HeadBlend, Intervention
from tvjax.rows import prepare_rows, scores


@dataclasses.dataclass(frozen=True)
class Scores:
    first_token: float  # fraction of prompts whose first generated token is the answer's first token
    exact_match: float | None  # fraction whose generated first line equals the answer (None: first token only)
    contains: float | None  # fraction whose generation begins with the answer (None: first token only)
    n: int  # prompts scored
    skipped: int  # pairs whose answer does not tokenise (reported, not scored)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluate(model, task: Task, *, intervention: Intervention | tuple | None = None, shots: int = 0,
             split: str = "test", seed: int = 0, batch_size: int = 16, max_new_tokens: int | None = None,
             template: Template = Template(), desc: str | None = None, first_token_only: bool = False) -> Scores:
    """`evaluate_many` of one task, with `intervention` (any kind, or None); the arguments as there."""
    return evaluate_many(model, [task], interventions=[intervention], shots=shots, split=split, seed=seed,
                         batch_size=batch_size, max_new_tokens=max_new_tokens, template=template, desc=desc,
                         first_token_only=first_token_only)[0]


def first_token_scores(model, task: Task, interventions: Sequence, *, shots: int = 0, split: str = "test",
                       seed: int = 0, template: Template = Template(), chunk: int = 256, batch_size: int = 16,
                       desc: str | None = None) -> list[Scores]:
    """First-token accuracy of `task`'s `split` under each of `interventions` (None: the plain
    model), exact match and contains None.

    Only the last prompt token depends on an intervention, so each chunk of prompts runs its
    prefixes once into a KV cache (`tvjax.rows`) and then the last token alone per
    intervention: scoring K interventions costs about one forward of the prompts, not K. The
    prefixes run in batches of `batch_size` (the rows generation would pad), in even chunks of
    at most about `chunk` prompts.
    """
    config, params, tokenizer = model
    prompts, skipped = prompts_for(tokenizer, task, split, shots, template=template, seed=seed)
    hits, parts = np.zeros(len(interventions)), -(-len(prompts) // chunk)
    size = -(-len(prompts) // parts // batch_size) * batch_size  # even chunks: the last one pads least
    for part, real in tqdm(list(chunks(prompts, size)), desc=desc or f"first tokens {task.name}", leave=False,
                           disable=None):  # one shape: the last chunk is padded
        rows = prepare_rows(model, part, batch_size=batch_size)  # prefixes in batches, as generation runs them
        hits += [np.sum(scores(params, i, rows, config=config)[1][:real]) for i in interventions]
    return [Scores(h / len(prompts), None, None, len(prompts), len(skipped)) for h in hits.tolist()]


def evaluate_many(model, tasks: Sequence[Task], *, interventions: Sequence | None = None, shots: int = 0,
                  split: str = "test", seed: int = 0, batch_size: int = 64, max_new_tokens: int | None = None,
                  template: Template = Template(), desc: str | None = None,
                  first_token_only: bool = False) -> list[Scores]:
    """Score each task's `split` with `shots` demonstrations per prompt and an optional intervention
    per task, many tasks in shared batches (decoding reads the weights once per step for all).

    Each task's prompts get its own intervention (`interventions[a]`: None, any kind, acting
    where its `positions` says; the same one for every task, or one `HeadBlend` per task, applied
    to its rows through `HeadBlend.rows`) and its own generation budget (`max_new_tokens`, by
    default `answer_budget` of its prompts). Rows are batched in order of budget and (with several
    tasks) of length, each batch padded to its own longest prompt (bucketed: a short task's prompts
    are not padded to a long task's), and a batch stops decoding once every row has ended: a
    task's scores are the ones it gets alone but for padding. `first_token_only` scores the first
    token without generating (`first_token_scores`) and leaves exact match and contains None.
    """
    check_value("shots", shots, NON_NEGATIVE)
    check_value("batch_size", batch_size, COUNT)
    check_value("max_new_tokens", max_new_tokens, optional(COUNT, "each task's answer_budget"))
    config, params, tokenizer = model
    interventions = [None] * len(tasks) if interventions is None else list(interventions)
    if len(interventions) != len(tasks):
        raise ValueError(f"evaluate_many needs one intervention per task: {len(interventions)} for {len(tasks)} tasks")
    if first_token_only:
        return [first_token_scores(model, t, [i], shots=shots, split=split, seed=seed, template=template,
                                   batch_size=batch_size, desc=desc)[0] for t, i in zip(tasks, interventions)]
    per_task = [prompts_for(tokenizer, t, split, shots, template=template, seed=seed) for t in tasks]
    budgets = [max_new_tokens or answer_budget(prompts) for prompts, _ in per_task]
    many = len(tasks) > 1  # then batches by budget and length, each padded to its own longest (bucketed)
    items = sorted(((a, p) for a, (prompts, _) in enumerate(per_task) for p in prompts),
                   key=lambda item: (budgets[item[0]], len(item[1].ids) * many))  # a batch decodes to its longest
    shared = None if many else bucket_length(max(len(p.ids) for _, p in items))  # one task: one shape
    for_rows = _per_row(interventions)
    hits, pad = np.zeros((len(tasks), 3)), pad_id(tokenizer)
    for chunk, real in tqdm(list(chunks(items, batch_size)),
                            desc=desc or f"eval {tasks[0].name if len(tasks) == 1 else f'{len(tasks)} tasks'}",
                            leave=False, disable=None):
        task, ids = np.asarray([a for a, _ in chunk]), [p.ids for _, p in chunk]
        tokens, mask = pad_left(ids, pad, shared or bucket_length(max(map(len, ids))))
        new = generate(params, tokens, config=config, mask=mask, max_new_tokens=max(budgets[a] for a in task),
                       intervention=for_rows(task), budgets=[budgets[a] for a in task])
        for (a, prompt), row in zip(chunk[:real], new[:real]):
            hits[a] += score_row(tokenizer, row[:budgets[a]], prompt, config.eos_ids)
    return [Scores(*(hits[a] / len(prompts)).tolist(), len(prompts), len(skipped))
            for a, (prompts, skipped) in enumerate(per_task)]


def _per_row(interventions: list):
    """`task [B] -> the intervention of each row's task`: the one shared by every task (or None)
    as it is, one `HeadBlend` per task stacked and gathered row by row."""
    if all(i is interventions[0] for i in interventions):
        return lambda task: interventions[0]
    if all(isinstance(i, HeadBlend) for i in interventions):
        stacked = HeadBlend.stack(interventions)
        return stacked.rows
    raise ValueError("evaluate_many shares batches between tasks with one intervention for all, or one HeadBlend "
                     "per task; evaluate tasks with other interventions one at a time (tvjax.evaluate)")


def answer_budget(prompts) -> int:
    """Tokens to generate for `prompts`: the longest answer plus one (the line break), rounded
    up to a multiple of 4 so that tasks share compiled shapes."""
    return -(-(max(len(p.answer) for p in prompts) + 1) // 4) * 4


def score_row(tokenizer, row: np.ndarray, prompt, eos_ids: tuple[int, ...]) -> np.ndarray:
    """`[first token, exact match, contains]` (0 or 1 each) of one generated `row` for `prompt`."""
    target, text = prompt.pair[1].strip(), generated_text(tokenizer, row, eos_ids)
    return np.array([row[0] == prompt.answer[0], _first_line(text) == target, text.startswith(target)], float)


def answer_text(tokenizer, row: np.ndarray, eos_ids: tuple[int, ...]) -> str:
    """The generated answer: decoded up to end-of-sequence, first line, stripped."""
    return _first_line(generated_text(tokenizer, row, eos_ids))


def generated_text(tokenizer, row: np.ndarray, eos_ids: tuple[int, ...]) -> str:
    """The generation decoded up to end-of-sequence, stripped."""
    return tokenizer.decode(until_eos(row, eos_ids), skip_special_tokens=True).strip()


def _first_line(text: str) -> str:
    return (text.splitlines() or [""])[0].strip()
