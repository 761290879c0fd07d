"""The FLOPs of generating rollouts, from an architecture and token counts (no torch, no weights).

Convention (docs/rollout_compute.md; tests/unit/test_rollout_flops.py checks it against
`torch.utils.flop_counter.FlopCounterMode` on a real Qwen3):
- Positions are 0-based. A response of L tokens after a prompt of P tokens occupies positions
  P .. P+L-1. Response token k (k = 1..L) is produced by the single-token forward pass of the token
  before it, at position P+k-2, whose attention spans P+k-1 keys (the P+k-2 cached ones and its own).
- That pass costs `decode_flops_per_token(arch, keys)` = 2 x matmul weights (all projections and
  the LM head) + 4 x layers x query heads x head_dim x keys (QK^T and AV, 2 FLOPs per
  multiply-add). Norms, RoPE, softmax and activations (elementwise, a fraction of a percent) are
  not counted, as FlopCounterMode does not count them.
- Attention is linear in keys, so a response's L passes cost exactly L passes at the mean key
  count P + (L-1)/2. For many responses of mean length L it is a slight underestimate of the
  attention term (the mean of L^2 exceeds the square of the mean).
- The prompt's other positions 0..P-2 (the prefill, without LM head: their logits are not needed)
  are `prefill_flops`: counted once per prompt and per model that samples it, as SGLang's radix
  cache shares a prompt among its group. The last prompt position belongs to every sample (the
  engine recomputes it per request), so it is in the response's count above.
"""

from __future__ import annotations

from megatron_s2l.archs import ModelArch


def attention_flops_per_key(arch: ModelArch) -> int:
    """QK^T and AV of one query token against one key, over all layers and query heads."""
    return 2 * 2 * arch.num_hidden_layers * arch.num_attention_heads * arch.head_dim


def decode_flops_per_token(arch: ModelArch, keys: float) -> float:
    """One single-token forward pass (with LM head) whose attention spans `keys` positions."""
    return 2 * arch.matmul_params() + attention_flops_per_key(arch) * keys


def mean_keys(prompt_len: float, response_len: float) -> float:
    """Mean attended keys over the passes that produce a response of `response_len` tokens."""
    return prompt_len + (response_len - 1) / 2


def generation_flops(arch: ModelArch, tokens: float, mean_response_len: float, prompt_len: float) -> float:
    """FLOPs of generating `tokens` response tokens in responses of mean length `mean_response_len`
    after prompts of `prompt_len` tokens (0 when unknown: then only the response is attended)."""
    return tokens * decode_flops_per_token(arch, mean_keys(prompt_len, mean_response_len))


def prefill_flops(arch: ModelArch, prompt_len: int) -> float:
    """Positions 0..P-2 of one prompt of P tokens, without the LM head."""
    positions = max(prompt_len - 1, 0)
    body = 2 * (arch.matmul_params() - arch.vocab_size * arch.hidden_size)
    # position t attends over t+1 keys: 1 + 2 + ... + (P-1)
    return positions * body + attention_flops_per_key(arch) * positions * (positions + 1) / 2


def flops_unit(value: float) -> tuple[float, str]:
    """The largest unit in which `value` is at least 1, as (scale, name) for printing."""
    for scale, unit in ((1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP")):
        if value >= scale:
            return scale, unit
    return 1.0, "FLOP"
