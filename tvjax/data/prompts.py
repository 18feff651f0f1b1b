"""Prompts: a template, ICL and zero-shot prompts, and answer tokens with the right spacing.

A prompt ends just before the answer. The answer is tokenised *in context* (the
tokens of `prompt + answer` after those of `prompt`), so leading spaces merge into
the first answer token the way the model saw them in the demonstrations. Tokens
that are only whitespace at the start of an answer (e.g. ' ' before digits in
SmolLM2's tokenizer) move to the end of the prompt, so the first answer token is
the one that carries information.
"""

from __future__ import annotations

import dataclasses
import random
from typing import NamedTuple, Sequence

from tvjax.data.tasks import Pair, TaskError

DEFAULT_TEMPLATE = "Q: {input}\nA: {output}\n\n"


DEMOS = ("distinct", "site")


@dataclasses.dataclass(frozen=True)
class Template:
    """How one (input, output) pair is written (`{input}` must come before `{output}`), and how a
    prompt's demonstrations are drawn (`demos`):

      'distinct'  per query, seeded once, `shots` train pairs other than the query (the default);
      'site'      the soft-injection paper's code (SNU-DRL/Soft_Injection, at batch 1) replayed:
                  per query one `choice` of its one task then `sample(range(len(train)), shots + 1)`,
                  the first `shots` in that order, the query not excluded; and a digit answer
                  written without the space before it ("A:13"), as it writes them.
    """

    text: str = DEFAULT_TEMPLATE
    demos: str = "distinct"

    def __post_init__(self):
        if self.text.count("{input}") != 1 or self.text.count("{output}") != 1 or \
                self.text.index("{input}") > self.text.index("{output}"):
            raise TaskError(f"template {self.text!r} must contain {{input}} once, then {{output}} once")
        if self.demos not in DEMOS:
            raise TaskError(f"demos={self.demos!r}: demonstrations are drawn as {' or '.join(map(repr, DEMOS))}")

    def demonstration(self, pair: Pair) -> str:
        text = self.text.replace(" {output}", "{output}") if self._unspaced(pair[1]) else self.text
        return text.replace("{input}", pair[0]).replace("{output}", pair[1])

    def _unspaced(self, output: str) -> bool:
        """Whether `output` is written right after the text before it (SITE's digit answers)."""
        return self.demos == "site" and output.isdigit()

    @property
    def after_output(self) -> str:
        """The text that follows the answer in a demonstration (`'\n\n'` by default)."""
        return self.text[self.text.index("{output}") + len("{output}"):]

    def query(self, x: str) -> tuple[str, str]:
        """`(prompt tail, answer lead)`: the text before `{output}` split off its trailing spaces."""
        before = self.text[: self.text.index("{output}")].replace("{input}", x)
        tail = before.rstrip(" ")
        return tail, before[len(tail):]


class Prompt(NamedTuple):
    """One tokenised prompt: `ids` end just before the answer; `answer` are its tokens.

    `lead` is the whitespace text moved from the answer into the prompt ('' or e.g. ' ').
    `stop`: the token that follows the answer in a demonstration another one follows (the first
    of the template's text after `{output}`, e.g. a line break), as a 1-tuple, or `()` when there is none.
    """

    ids: list[int]
    answer: list[int]
    pair: Pair
    lead: str = ""
    stop: tuple[int, ...] = ()


def build_texts(template: Template, queries: Sequence[Pair], shots: int, pool: Sequence[Pair],
                seed: int) -> list[tuple[str, str, Pair]]:
    """`(prompt text, answer text, pair)` per query with `shots` demonstrations drawn from `pool`.

    Demonstrations are drawn as `template.demos` says: by default never the query pair itself,
    seeded once for all queries.
    """
    rng = random.Random(seed)
    out = []
    for pair in queries:
        if template.demos == "site":
            rng.choice([0])  # its draw of a task among one: it takes random bits all the same
            demos = [pool[i] for i in rng.sample(range(len(pool)), shots + 1)[:shots]]
        else:
            candidates = [p for p in pool if p != pair]
            if len(candidates) < shots:
                raise TaskError(f"{shots}-shot prompts need {shots} demonstrations; only {len(candidates)} available")
            demos = rng.sample(candidates, shots)
        tail, lead = template.query(pair[0])
        context = "".join(template.demonstration(d) for d in demos)
        out.append((context + tail, ("" if template._unspaced(pair[1]) else lead) + pair[1], pair))
    return out


def tokenize(tokenizer, texts: Sequence[tuple[str, str, Pair]],
             template: Template | None = None) -> tuple[list[Prompt], list[tuple[Pair, str]]]:
    """Tokenise prompts and answers; returns `(prompts, skipped)` with a reason per skipped pair.

    `template`: each prompt's `stop` is the first token after the answer when the answer ends
    a demonstration that another demonstration follows (`template.after_output`, then the
    pair again), as the model sees it in an ICL prompt; none when the template has no text
    after `{output}` or that text merges with the answer. (At the end of a text a tokenizer
    may join what it splits before more text: SmolLM2 reads "\n\n" as one token there and
    as two "\n" between demonstrations.)
    """
    followed = template is not None and bool(template.after_output)
    prompts, skipped = [], []
    for prompt, answer, pair in texts:
        ids = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + answer)["input_ids"]
        ended = tokenizer(prompt + answer + template.after_output + template.demonstration(pair))["input_ids"] \
            if followed else full
        stop = tuple(ended[len(full):len(full) + 1]) if ended[:len(full)] == full else ()
        if full[: len(ids)] != ids:
            skipped.append((pair, "the answer merges with the end of the prompt into other tokens"))
            continue
        answer_ids, lead = full[len(ids):], ""
        while answer_ids and not tokenizer.decode(answer_ids[:1]).strip():
            lead += tokenizer.decode(answer_ids[:1])
            ids, answer_ids = ids + answer_ids[:1], answer_ids[1:]
        if not answer_ids:
            skipped.append((pair, "the answer tokenises to nothing but whitespace"))
            continue
        prompts.append(Prompt(ids, answer_ids, pair, lead, stop))
    return prompts, skipped
