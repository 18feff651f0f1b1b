"""tvjax: task vectors for language models in JAX/Flax.

Without JAX installed the JAX-free modules stay importable: `tvjax.taskvector` (reading
and writing intervention files), `tvjax.llamacpp`, `tvjax.torch_port`, `tvjax.config`,
`tvjax.convert.architectures`, `tvjax.report` and `tvjax.batching`; everything else needs JAX.
"""

from tvjax.version import __version__

try:
    import jax  # noqa: F401
except ImportError:  # e.g. a PyTorch-only environment reading task-vector files
    pass
else:
    from tvjax.config import ModelConfig
    from tvjax.convert import CheckpointError, Model, UnsupportedArchitecture, load
    from tvjax.generation import generate
    from tvjax.interventions import SITES, Edit, HeadBlend, Intervention, ResidualEdit, scaled
    from tvjax.model import KVCache, Output, forward, init_params, run_with_cache
    from tvjax.data import Task, TaskError, Template, builtin_names, load_task
    from tvjax.extract import extract_means, extract_means_many, site_means
    from tvjax.fitting import FitConfig, FitResult, fit, fit_many
    from tvjax.evaluation import Scores, evaluate, evaluate_many
    from tvjax.taskvector import (InterventionFile, Kind, ResidualVector, TaskVector, TaskVectorError,
                                  load_intervention, load_task_vector, register_kind, save_intervention,
                                  save_task_vector)
    from tvjax.extractor import TaskVectorExtractor
    from tvjax.function_vectors import FunctionVectorConfig, function_vector_for
    from tvjax.patching import layer_patch
    from tvjax.reinforce import ReinforceConfig, select_heads
    from tvjax.compile_cache import enable_compilation_cache

    __all__ = ["ModelConfig", "HeadBlend", "KVCache", "Output", "forward", "init_params", "generate", "load",
               "Model", "CheckpointError", "UnsupportedArchitecture", "Task", "TaskError", "Template",
               "builtin_names", "load_task", "extract_means", "extract_means_many", "FitConfig", "FitResult", "fit",
               "fit_many", "Scores", "evaluate", "evaluate_many", "TaskVector", "TaskVectorError", "load_task_vector",
               "save_task_vector", "ResidualVector", "InterventionFile", "Kind", "register_kind", "load_intervention", "save_intervention", "TaskVectorExtractor",
               "SITES", "Edit", "Intervention", "ResidualEdit", "scaled", "run_with_cache",
               "site_means", "FunctionVectorConfig", "function_vector_for", "layer_patch", "ReinforceConfig",
               "select_heads", "enable_compilation_cache"]
