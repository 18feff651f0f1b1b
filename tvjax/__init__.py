"""tvjax: task vectors for language models in JAX/Flax."""

from tvjax.config import ModelConfig
from tvjax.convert import CheckpointError, Model, UnsupportedArchitecture, load
from tvjax.generate import generate
from tvjax.interventions import HeadBlend
from tvjax.model import KVCache, Output, forward, init_params

__version__ = "0.1.0"
__all__ = ["ModelConfig", "HeadBlend", "KVCache", "Output", "forward", "init_params", "generate", "load",
           "Model", "CheckpointError", "UnsupportedArchitecture"]
