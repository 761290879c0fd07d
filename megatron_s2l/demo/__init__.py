"""The CPU demo, apart from the product: its synthetic task (`task`), tiny Qwen3-architecture models
and tokenizer (`tiny`, also what the tests build), the cached demo assets (`assets`) and `s2l demo`
(`cli`)."""
