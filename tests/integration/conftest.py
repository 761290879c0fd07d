from pathlib import Path

import pytest
from rollout_fixtures import rollout_engines, tiny_models  # noqa: F401  (rollout/sync server fixtures)
from served_fixtures import served, served_models  # noqa: F401  (shared `s2l serve` engines)


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


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """The demo's task and models at test size (3 warm-up steps each), built once per session for
    every test that runs `s2l` on them (`DemoAssets`)."""
    from megatron_s2l.demo.assets import DemoRecipe, ModelRecipe, prepare_demo

    recipe = DemoRecipe(
        num_train=48,
        num_eval=4,
        warmup_batch=8,
        explorer=ModelRecipe(2, 64, 128, 2, 1, 3, 3e-3),
        learner=ModelRecipe(2, 64, 128, 4, 2, 3, 3e-3),
    )
    return prepare_demo(tmp_path_factory.mktemp("demo"), recipe)
