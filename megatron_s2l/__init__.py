"""megatron-s2l: a Megatron-core GRPO trainer for S2L-PO (small-to-large policy optimization)."""
