"""Benchmarks run from the `s2l` command line: `s2l bench rollout` (rollout FLOPs of S2L-PO vs GRPO)."""
