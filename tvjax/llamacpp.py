"""Residual vectors as llama.cpp control vectors (GGUF files, as repeng writes them). No JAX.

A control vector file has the architecture `controlvector`, the metadata
`controlvector.model_hint` and `controlvector.layer_count`, and one float32 tensor
`direction.{l}` `[D]` per layer `l`, which llama.cpp adds to the output of layer `l`
(`llama-cli --control-vector FILE`, or `--control-vector-scaled FILE SCALE`).

Two differences from tvjax's own edit, which the file cannot express: llama.cpp adds the
vector at every position (tvjax adds a function vector at the last prompt token only), and
it has no direction for layer 0 (the embedding output is never edited). A layer patch
replaces the residual stream instead of adding to it, so only additive edits (function
vectors) export.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tvjax.taskvector import ResidualVector, TaskVectorError, load_intervention

ARCHITECTURE = "controlvector"


def save_control_vector(path: str | os.PathLike, vector: str | os.PathLike | ResidualVector,
                        model_hint: str | None = None, scale: float = 1.0) -> Path:
    """Write the additive part of a residual edit (a file or a loaded `ResidualVector`) as a
    llama.cpp control vector: `direction.{l}` = `scale * add[l]` for every layer with a non-zero `add`.

    `model_hint`: the architecture llama.cpp records (default: the edit's model family).
    `scale`: the strength written (as `tvjax.scaled`; llama.cpp's `--control-vector-scaled` scales it again).
    Raises `TaskVectorError` for a head blend, a patch (`weight != 0`), or an edit of layer 0.
    """
    import gguf

    loaded = vector if isinstance(vector, ResidualVector) else load_intervention(vector)
    if not isinstance(loaded, ResidualVector):
        raise TaskVectorError(f"a {loaded.kind} acts on attention heads; only a residual edit (a function vector) "
                              f"becomes a llama.cpp control vector")
    if (loaded.weight != 0).any():
        raise TaskVectorError(f"this residual edit patches layer(s) {np.flatnonzero(loaded.weight).tolist()} (it "
                              f"replaces the residual stream); a control vector can only add a vector")
    layers = np.flatnonzero((loaded.add != 0).any(-1))
    if 0 in layers:
        raise TaskVectorError("this edit adds to layer 0's output, which llama.cpp control vectors cannot reach "
                              "(their directions start at layer 1)")
    if not len(layers):
        raise TaskVectorError("this edit adds nothing: no control vector to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), ARCHITECTURE)
    writer.add_string(f"{ARCHITECTURE}.model_hint", model_hint or loaded.model["family"])
    writer.add_uint32(f"{ARCHITECTURE}.layer_count", len(layers))
    for layer in layers:
        writer.add_tensor(f"direction.{layer}", (scale * loaded.add[layer]).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
