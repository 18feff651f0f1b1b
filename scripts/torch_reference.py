"""The soft-task-vector pipeline done the usual PyTorch way: the benchmark's baseline.

Hooks on each layer's attention output projection (`tvjax.torch_port.TaskVectorHook`)
blend the heads at the last prompt token, and autograd runs through the whole model.
Prompts, batches and data order are tvjax's own (same token ids, same
`batch_indices`), so only the model computation differs from `tvjax.fitting`.
Dimension letters: B batch, T tokens, L layers, N heads, H head dim, V vocab.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from tvjax.batching import chunks, pad_left
from tvjax.fitting import FitConfig
from tvjax.train import batch_indices
from tvjax.torch_port import Intervention, SaveInputsHook, TaskVectorHook, attention_outputs


class TorchPipeline:
    """Means, fitting and evaluation of a soft task vector on a transformers model."""

    def __init__(self, hf_model, pad_id: int):
        self.model, self.pad_id = hf_model.eval(), pad_id
        for p in hf_model.parameters():
            p.requires_grad_(False)
        c = hf_model.config
        self.L, self.N = c.num_hidden_layers, c.num_attention_heads
        self.targets = attention_outputs(hf_model)

    def batch(self, prompts) -> dict:
        """Left-padded `input_ids`, `attention_mask` and `position_ids` `[B, T]` (T: the longest prompt)."""
        tokens, mask = pad_left([p.ids for p in prompts], self.pad_id, max(len(p.ids) for p in prompts))
        mask = torch.as_tensor(mask, dtype=torch.long)
        return {"input_ids": torch.as_tensor(tokens, dtype=torch.long), "attention_mask": mask,
                "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}

    def means(self, prompts, batch_size: int = 8) -> torch.Tensor:
        """`[L, N, H]`: each head's output at the last token, averaged over `prompts`."""
        total = 0
        for chunk, real in chunks(prompts, batch_size):
            with Intervention(self.targets, SaveInputsHook()) as saved, torch.inference_mode():
                self.model(**self.batch(chunk), use_cache=False)
            last = torch.stack([saved[name][0][:real, -1] for name in self.targets])  # [L, B, N * H]
            total = total + last.double().sum(1)
        return (total / len(prompts)).float().reshape(self.L, self.N, -1)

    def first_token_loss(self, hook: TaskVectorHook, theta: torch.Tensor, batch: dict, targets) -> torch.Tensor:
        """Mean cross-entropy of the answers' first tokens with the blend at the last token."""
        hook.weight = torch.sigmoid(theta)
        with Intervention(self.targets, hook):
            logits = self.model(**batch, use_cache=False).logits[:, -1]  # [B, V]
        return torch.nn.functional.cross_entropy(logits.float(), targets)

    def step_fn(self, mu: torch.Tensor, config: FitConfig = FitConfig()):
        """`step(batch, targets) -> loss`: one Adam step on theta `[L, N]` (returned with it)."""
        theta = torch.full((self.L, self.N), config.init, requires_grad=True)
        optimizer = torch.optim.Adam([theta], lr=config.learning_rate)
        hook = TaskVectorHook(self.model, torch.sigmoid(theta.detach()), mu)

        def step(batch, targets):
            optimizer.zero_grad()
            loss = self.first_token_loss(hook, theta, batch, targets)
            loss.backward()
            optimizer.step()
            return loss

        return step, theta, hook

    def fit(self, train, valid, mu: torch.Tensor, config: FitConfig = FitConfig()) -> tuple[torch.Tensor, float]:
        """`theta` `[L, N]` with the best validation loss, as `tvjax.fitting` (first-token loss), and
        the seconds the fit took to reach it."""
        start = time.perf_counter()
        step, theta, hook = self.step_fn(mu, config)
        valid_batch, valid_targets = self.batch(valid), torch.tensor([p.answer[0] for p in valid])

        def validate():
            with torch.no_grad():
                return float(self.first_token_loss(hook, theta, valid_batch, valid_targets))

        best, best_loss = theta.detach().clone(), validate()
        to_best = time.perf_counter() - start
        for i in range(config.steps):
            rows = [train[j] for j in batch_indices(len(train), config.batch_size, i, config.seed)]
            step(self.batch(rows), torch.tensor([p.answer[0] for p in rows]))
            if (i + 1) % config.eval_every == 0 or i + 1 == config.steps:
                loss = validate()
                if loss < best_loss:
                    best, best_loss, to_best = theta.detach().clone(), loss, time.perf_counter() - start
        return best, to_best

    def generate(self, prompts, theta: torch.Tensor, mu: torch.Tensor, max_new_tokens: int) -> np.ndarray:
        """`[B, max_new_tokens]` greedy tokens with the task vector (transformers' `generate`)."""
        hook = TaskVectorHook(self.model, torch.sigmoid(theta), mu)
        with Intervention(self.targets, hook), torch.inference_mode():
            batch = self.batch(prompts)
            out = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                      do_sample=False, pad_token_id=self.pad_id)
        return out[:, batch["input_ids"].shape[1]:].numpy()

    def first_token_accuracy(self, prompts, theta, mu, max_new_tokens: int, batch_size: int = 16) -> float:
        hits = 0
        for chunk, real in chunks(prompts, batch_size):
            new = self.generate(chunk, theta, mu, max_new_tokens)
            hits += sum(int(row[0] == p.answer[0]) for p, row in zip(chunk[:real], new[:real]))
        return hits / len(prompts)
