"""PPO mini-batches of one rollout step (verl's semantics): which rows each optimizer update takes.

The step's batch holds whole groups of G consecutive rows. It is cut into mini-batches of whole
groups (a group is never split: its advantages are relative to each other), and each of the
`epochs` passes visits every mini-batch once, in an order drawn from the run seed, the step and the
pass, so a resumed run makes the same updates.

With `by_samples` (`algo.explorer_mini_batch: samples`, the explorer half-steps of the released
scripts, whose mini-batch size counts samples) a mini-batch is `prompts_per_update` consecutive rows
instead: groups may span two mini-batches (their advantages were computed before).
"""

from __future__ import annotations

import torch

from megatron_s2l.algo.seeds import stable_seed


def ppo_mini_batch_rows(
    num_prompts: int,
    group_size: int,
    prompts_per_update: int,
    *,
    epochs: int,
    seed: int,
    step: int,
    by_samples: bool = False,
) -> list[slice]:
    """Row ranges of the step's optimizer updates, in update order (epochs x mini-batches).

    `prompts_per_update` 0 means `num_prompts` (one update over the whole batch per epoch); with
    `by_samples` the same number counts samples (rows), not prompts, as verl's mini-batch size does
    in a run that draws one sample per prompt: G times as many updates."""
    units = num_prompts * group_size if by_samples else num_prompts
    unit = "samples" if by_samples else "prompts"
    per_update = prompts_per_update or num_prompts
    if units % per_update:
        raise ValueError(f"{units} {unit} per step do not divide into mini-batches of {per_update} {unit}")
    rows = per_update if by_samples else per_update * group_size
    count = units // per_update
    updates = []
    for epoch in range(epochs):
        generator = torch.Generator().manual_seed(stable_seed("ppo", seed, step, epoch))
        order = torch.randperm(count, generator=generator).tolist() if count > 1 else [0]
        updates += [slice(i * rows, (i + 1) * rows) for i in order]
    return updates


def mean_over_updates(updates: list[dict[str, float]]) -> dict[str, float]:
    """One step's train metrics from its updates' metrics: the mean of each metric over the updates
    (grad_norm over the applied ones), the last learning rate, the number of skipped updates, and
    `updates` (how many optimizer updates the step made)."""
    applied = [u for u in updates if not u["skipped"]]
    metrics = {k: sum(u[k] for u in updates) / len(updates) for k in updates[0] if k not in ("lr", "skipped")}
    norms = [u["grad_norm"] for u in applied]
    metrics["grad_norm"] = sum(norms) / len(norms) if norms else float("nan")
    metrics["lr"] = updates[-1]["lr"]
    metrics["skipped"] = float(len(updates) - len(applied))
    metrics["updates"] = float(len(updates))
    return metrics
