"""Learner -> learner-engine weight sync: bucket the learner's HF-named tensors, send by transport.

See docs/weight_sync.md. Submodules are imported where used (`weight_sync` pulls in the HTTP client);
`config` holds the run config's section alone.
"""
