from pathlib import Path

import pytest
from rollout_fixtures import rollout_engines, tiny_models  # noqa: F401  (rollout/sync server fixtures)


@pytest.fixture(scope="session")
def tiny_qwen3_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Learner tests' checkpoints: {"untied": dir, "tied": dir}, 2-layer Qwen3 (hidden 64, 4 heads /
    2 KV heads, head_dim 32, vocab 512) sharing one tokenizer; "tied" is sharded with an index file."""
    from megatron_s2l.demo.tiny import make_tiny_qwen3

    root = tmp_path_factory.mktemp("learner_models")
    untied = make_tiny_qwen3(root / "untied", seed=0)
    tied = make_tiny_qwen3(
        root / "tied", tokenizer_dir=untied, tie_word_embeddings=True, seed=1, max_shard_size="50KB"
    )
    return {"untied": untied, "tied": tied}
