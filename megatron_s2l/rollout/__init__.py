"""SGLang engine pools for the explorer and the learner, the async client, and the S2L group sampler.

See docs/rollout.md. Submodules are imported where used (they pull in httpx, transformers).
"""
