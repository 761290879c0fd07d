"""Evaluation: estimators over k samples per problem."""

from megatron_s2l.eval.metrics import avg_at_k, maj_at_k, pass_at_k

__all__ = ["avg_at_k", "maj_at_k", "pass_at_k"]
