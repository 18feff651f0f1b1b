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
from tvjax.generation import generate, until_eos
from tvjax.interventions import HeadBlend, Intervention, RowBlend
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
             template: Template = Template(), desc: str | None = None, positions: str = "last",
             first_token_only: bool = False) -> Scores:
    """Score `task`'s `split` with `shots` demonstrations per prompt and an optional intervention.

    The intervention edits the last prompt token of each prompt (with `positions` 'answer' or
    'split', also each generated token). `max_new_tokens` defaults to `answer_budget(prompts)`;
    `first_token_only` scores the first token without generating (`first_token_scores`) and
    leaves exact match and contains None.
    """
    if first_token_only:
        return first_token_scores(model, task, [intervention], shots=shots, split=split, seed=seed,
                                  template=template)[0]
    config, params, tokenizer = model
    prompts, skipped = prompts_for(tokenizer, task, split, shots, template=template, seed=seed)
    length = bucket_length(max(len(p.ids) for p in prompts))
    if max_new_tokens is None:
        max_new_tokens = answer_budget(prompts)
    hits, pad = np.zeros(3), pad_id(tokenizer)
    for chunk, real in tqdm(list(chunks(prompts, batch_size)), desc=desc or f"eval {task.name}",
                            leave=False, disable=None):
        tokens, mask = pad_left([p.ids for p in chunk], pad, length)
        new = generate(params, tokens, config=config, mask=mask, max_new_tokens=max_new_tokens,
                       intervention=intervention, positions=positions)
        for prompt, row in zip(chunk[:real], new[:real]):
            hits += score_row(tokenizer, row, prompt, config.eos_ids)
    return Scores(*(hits / len(prompts)), len(prompts), len(skipped))


def first_token_scores(model, task: Task, interventions: Sequence, *, shots: int = 0, split: str = "test",
                       seed: int = 0, template: Template = Template(), chunk: int = 256) -> list[Scores]:
    """First-token accuracy of `task`'s `split` under each of `interventions` (None: the plain
    model), exact match and contains None.

    Only the last prompt token depends on an intervention, so each chunk of prompts runs its
    prefixes once into a KV cache (`tvjax.rows`) and then the last token alone per
    intervention: scoring K interventions costs about one forward of the prompts, not K.
    """
    config, params, tokenizer = model
    prompts, skipped = prompts_for(tokenizer, task, split, shots, template=template, seed=seed)
    hits = np.zeros(len(interventions))
    for part, real in tqdm(list(chunks(prompts, min(chunk, len(prompts)))), desc=f"first tokens {task.name}",
                           leave=False, disable=None):  # one shape: the last chunk is padded
        rows = prepare_rows(model, part, batch_size=64)
        hits += [np.sum(scores(params, i, rows, config=config)[1][:real]) for i in interventions]
    return [Scores(h / len(prompts), None, None, len(prompts), len(skipped)) for h in hits.tolist()]


def evaluate_many(model, tasks: Sequence[Task], *, blends: Sequence[HeadBlend] | None = None, shots: int = 0,
                  split: str = "test", seed: int = 0, batch_size: int = 64,
                  template: Template = Template(), positions: str = "last",
                  first_token_only: bool = False) -> list[Scores]:
    """`evaluate` of many tasks in shared batches (decoding reads the weights once per step for all).

    Each task's prompts are scored as `evaluate` scores them, with its own blend (`blends[a]`,
    applied to its rows through `RowBlend`) and its own generation budget (1 with
    `first_token_only`); only the padding (to the longest prompt of all tasks) differs. Rows are
    batched in order of budget, and a batch stops decoding once every row has ended.
    """
    config, params, tokenizer = model
    if blends is not None and len(blends) != len(tasks):
        raise ValueError(f"evaluate_many needs one blend per task: {len(blends)} blends for {len(tasks)} tasks")
    per_task = [prompts_for(tokenizer, t, split, shots, template=template, seed=seed) for t in tasks]
    budgets = [1 if first_token_only else answer_budget(prompts) for prompts, _ in per_task]
    items = sorted(((a, p) for a, (prompts, _) in enumerate(per_task) for p in prompts),
                   key=lambda item: budgets[item[0]])  # a batch decodes as long as its longest budget
    length = bucket_length(max(len(p.ids) for _, p in items))
    if blends is not None:
        if len({b.base is None for b in blends}) > 1:
            raise ValueError("evaluate_many needs blends of one form: some have a base (form 'shift'), some not")
        theta, mu = (np.stack([np.asarray(x, np.float32) for x in xs]) for xs in
                     zip(*[(b.logits(), b.mu) for b in blends]))
        base = None if blends[0].base is None else np.stack([np.asarray(b.base, np.float32) for b in blends])
    hits, pad = np.zeros((len(tasks), 3)), pad_id(tokenizer)
    for chunk, real in tqdm(list(chunks(items, batch_size)), desc=f"eval {len(tasks)} tasks", leave=False,
                            disable=None):
        task = np.asarray([a for a, _ in chunk])
        tokens, mask = pad_left([p.ids for _, p in chunk], pad, length)
        new = generate(params, tokens, config=config, mask=mask, max_new_tokens=max(budgets),
                       intervention=None if blends is None else RowBlend.gather(theta, mu, task, base),
                       positions=positions, budgets=[budgets[a] for a in task])
        for (a, prompt), row in zip(chunk[:real], new[:real]):
            hits[a] += score_row(tokenizer, row[:budgets[a]], prompt, config.eos_ids)
    return [_scores(hits[a] / len(prompts), len(prompts), len(skipped), first_token_only)
            for a, (prompts, skipped) in enumerate(per_task)]


def _scores(rates: np.ndarray, n: int, skipped: int, first_token_only: bool) -> Scores:
    """`Scores` of `[first token, exact match, contains]` rates; the last two None for a first-token run."""
    first, exact, contains = rates.tolist()
    return Scores(first, None, None, n, skipped) if first_token_only else Scores(first, exact, contains, n, skipped)


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
