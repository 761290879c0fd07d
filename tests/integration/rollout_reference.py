"""Independent references for the rollout tests: `transformers` greedy tokens and log-probs (float32)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import requests
import torch

from megatron_s2l.rollout.http import bearer
from megatron_s2l.rollout.server import RUN_API_KEY

# Engine (SGLang, float32 on CPU) vs transformers log-probs: measured differences are ~3e-6
# (docs/design.md 3.2); 1e-4 leaves room for kernel order while still catching wrong weights.
LOGPROB_ATOL = 1e-4


@lru_cache(maxsize=8)
def load_hf_model(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def hf_token_logprobs(model_dir: str | Path, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
    """log p(response_t | prompt, response_<t) under the model, for each response token."""
    model = load_hf_model(str(model_dir))
    ids = torch.tensor([prompt_ids + response_ids])
    logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(response_ids) - 1)
    return logp[positions, torch.tensor(response_ids)].tolist()


@torch.no_grad()
def hf_greedy(model_dir: str | Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    model = load_hf_model(str(model_dir))
    ids = torch.tensor([prompt_ids])
    for _ in range(max_new_tokens):
        next_id = model(ids).logits[0, -1].argmax()
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return ids[0, len(prompt_ids) :].tolist()


def engine_greedy(
    url: str, prompt_ids: list[int], max_new_tokens: int, api_key: str = RUN_API_KEY, **extra
) -> dict:
    """One greedy /generate (EOS ignored, so the length is fixed) and its meta_info; `api_key`:
    the server's (engines this process started without `api_key_env` take `RUN_API_KEY`)."""
    payload = {
        "input_ids": prompt_ids,
        "sampling_params": {"temperature": 0.0, "max_new_tokens": max_new_tokens, "ignore_eos": True},
        "return_logprob": True,
        **extra,
    }
    response = requests.post(url + "/generate", json=payload, headers=bearer(api_key), timeout=300)
    response.raise_for_status()
    return response.json()


def logprobs_of(output: dict) -> list[float]:
    return [entry[0] for entry in output["meta_info"]["output_token_logprobs"]]
