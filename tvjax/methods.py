"""Every method tvjax compares, one record each: how it fits, how it is labelled, ranked, plotted
and flagged on the command line (no JAX needed to read the records).

`tvjax compare`, its tables and charts, `tvjax plot` and the command line's flags all read
`METHODS`; a method of your own is one `register_method(Method(...))`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Method:
    """One method.

    Attributes:
      name: its key in results (`scores[name]`) and in `--methods`.
      label: its column title in tables and charts.
      fit: None (a baseline: nothing is fitted), or `(model, task, means, config) ->
        (intervention, rankings, chose)` (or `'module:name'` of it), with `means` the task's
        `{'heads': [L, N, H], 'resid': [L, D]}` and `config` the `CompareConfig`; `rankings` maps
        ranking names (see `rankings`) to `[L, N]` lists, `chose` is JSON-able.
      together: fitted for every compared task at once (`tvjax.compare.fit_shared`): its `fit`
        then takes and returns lists, `(model, tasks, means per task, config) -> [(intervention,
        rankings, chose) per task]`.
      shots: evaluated with `shots`-shot prompts (ICL), else zero-shot.
      rankings: the head rankings it reports -> the colour bar label of their heatmaps.
      settings: the `CompareConfig` field holding its settings (a dataclass), or None.
      flags: `(help group title, tvjax.flags.add_config_flags keywords)` for its settings' flags (their
        help texts come from the settings' fields, `tvjax.fields.option`).
    """

    name: str
    label: str
    fit: Callable | str | None = None
    together: bool = False
    shots: bool = False
    rankings: dict = dataclasses.field(default_factory=dict)
    settings: str | None = None
    flags: tuple[str, dict] | None = None

    @property
    def fitted(self) -> bool:
        return self.fit is not None


METHODS: dict[str, Method] = {}  # in table order


def register_method(method: Method) -> Method:
    """Add (or replace) a method; returns it."""
    METHODS[method.name] = method
    return method


register_method(Method("zero_shot", "zero-shot"))
register_method(Method("icl", "ICL", shots=True))
register_method(Method("layer_patching", "layer patching", fit="tvjax.compare:fit_layer_patching"))
register_method(Method(
    "function_vector", "function vector", fit="tvjax.compare:fit_function_vector",
    rankings={"indirect_effects": "indirect effect (probability gain)"}, settings="function_vector",
    flags=("function vector (tvjax.function_vectors.FunctionVectorConfig)", {
        "prefix": "fv-", "aliases": {"k": ["--k"], "n_prompts": ["--fv-prompts"]},
        "help": {"layer": "add the vector at this layer (default: the best valid layer of a sweep)"}})))
register_method(Method(
    "reinforce", "REINFORCE", fit="tvjax.compare:fit_reinforce",
    rankings={"reinforce_probabilities": "REINFORCE replacement probability"}, settings="reinforce",
    flags=("REINFORCE (tvjax.reinforce.ReinforceConfig)", {
        "prefix": "reinforce-"})))
register_method(Method(
    "task_vector", "soft TV", fit="tvjax.compare:fit_soft_task_vectors", together=True,
    rankings={"soft_weights": "soft TV weight (sigmoid(theta); 2 sigmoid(theta) shifted)"}, settings="fit",
    flags=("soft task vector (tvjax.fitting.FitConfig)", {})))

BASELINES = tuple(name for name, m in METHODS.items() if not m.fitted)  # scored without fitting anything


def labels() -> dict[str, str]:
    """Method name -> its label."""
    return {name: m.label for name, m in METHODS.items()}


def rankings() -> dict[str, str]:
    """Every method's head rankings -> their colour bar labels."""
    return {k: v for m in METHODS.values() for k, v in m.rankings.items()}
