"""Config loading: every shipped YAML loads; bad input names the file and the key."""

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_s2l.cli import config_reference
from megatron_s2l.config import S2LConfig, load_config
from megatron_s2l.configio import ConfigError, build

ROOT = Path(__file__).resolve().parents[2]
YAMLS = sorted((ROOT / "yaml").rglob("*.yaml"))


def test_yaml_folder_is_not_empty() -> None:
    assert YAMLS, "yaml/ holds the run configurations"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(ROOT / "yaml")))
def test_every_shipped_yaml_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, S2LConfig)


def test_paper_configs_hold_the_authors_recipe() -> None:
    """yaml/paper/: the values of the authors' runs (each header names its sources), one config per run."""
    cfg = load_config(ROOT / "yaml/paper/qwen3-8b-1.7b-s2l.yaml")
    assert (cfg.schedule.group_size, cfg.schedule.prompts_per_step, cfg.schedule.steps) == (16, 1024, 16)
    assert cfg.schedule.t_mix == 8 and cfg.algo.ppo_mini_batch_prompts == 32
    assert cfg.algo.updates_per_step(cfg.schedule.prompts_per_step) == 32
    loss = cfg.algo.loss
    assert (loss.clip_low, loss.clip_high, loss.clip_c, loss.agg) == (0.2, 0.2, 3.0, "token-mean")
    assert (loss.kl_coef, loss.kl_estimator, loss.entropy_coef) == (0.001, "k3", 0.0)
    assert cfg.algo.norm_adv_by_std
    opt = cfg.learner.optimizer
    assert (opt.lr, opt.lr_schedule, opt.weight_decay, opt.grad_clip) == (1e-6, "constant", 0.01, 1.0)
    assert cfg.data.max_prompt_tokens == 512 and cfg.data.eval_files == ["/data/aime-2024.parquet"]
    assert (cfg.rollout.learner_sampling.temperature, cfg.rollout.learner_sampling.max_new_tokens) == (
        1.0,
        4096,
    )
    explorer = cfg.rollout.explorer_sampling
    assert (explorer.temperature, explorer.top_p, explorer.max_new_tokens) == (0.7, 0.95, 4096)
    assert "Qwen3-8B-Base" in cfg.model.learner and "Qwen3-1.7B-Base" in cfg.model.explorer

    assert "Qwen3-4B-Base" in load_config(ROOT / "yaml/paper/qwen3-8b-4b-s2l.yaml").model.explorer
    big = load_config(ROOT / "yaml/paper/qwen3-14b-4b-s2l.yaml")
    assert (big.schedule.group_size, big.schedule.t_mix, big.algo.ppo_mini_batch_prompts) == (8, 4, 16)
    assert "Qwen3-14B-Base" in big.model.learner and big.learner.reference_offload
    grpo = load_config(ROOT / "yaml/paper/qwen3-8b-grpo.yaml")
    assert grpo.schedule.t_mix == 0 and grpo.model.explorer == ""
    hot = load_config(ROOT / "yaml/paper/qwen3-8b-hightemp.yaml")
    assert hot.schedule.t_mix == 0 and hot.rollout.learner_sampling.temperature > 1.0
    for path in sorted((ROOT / "yaml/paper").glob("*.yaml")):
        assert path.read_text().startswith("# "), f"{path.name}: a header naming its source"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_overrides_and_base_overlay(tmp_path: Path) -> None:
    write(tmp_path, "schedule: {steps: 7, group_size: 4}\nalgo: {loss: {clip_high: 0.28}}\n", "base.yaml")
    child = write(tmp_path, "base: base.yaml\nschedule: {steps: 9}\n")
    cfg = load_config(child, ["algo.loss.clip_c=3", "algo.loss.agg=seq-mean-token-mean", "seed=5"])
    assert cfg.schedule.steps == 9 and cfg.schedule.group_size == 4  # overlay merged, not replaced
    assert cfg.algo.loss.clip_high == 0.28
    assert cfg.algo.loss.clip_c == 3.0 and isinstance(cfg.algo.loss.clip_c, float)
    assert cfg.algo.loss.agg == "seq-mean-token-mean" and cfg.seed == 5
    assert load_config(child, ["algo.loss.clip_c=null"]).algo.loss.clip_c is None


@pytest.mark.parametrize(
    ("text", "overrides", "match"),
    [
        ("schedule: {stepz: 3}\n", [], r"c\.yaml: schedule\.stepz: unknown key"),
        ("schedule: {steps: three}\n", [], r"c\.yaml: schedule\.steps: expected an integer"),
        ("schedule: {steps: 2.5}\n", [], r"schedule\.steps: expected an integer"),
        ("algo: {dynamic_sampling: 1}\n", [], r"algo\.dynamic_sampling: expected true/false"),
        ("algo: {loss: {agg: mean}}\n", [], r"algo\.loss\.agg: must be one of"),
        ("algo: {loss: {clip_low: 1.5}}\n", [], r"c\.yaml: algo\.loss: clip_low must be in"),
        ("schedule: {group_size: 0}\n", [], r"schedule: group_size must be >= 1"),
        ("schedule: 3\n", [], r"schedule: expected a mapping"),
        ("schedule: {steps: [1\n", [], r"malformed YAML"),
        ("- a\n- b\n", [], r"top level must be a mapping"),
        ("schedule: {t_mix: 3}\n", [], r"t_mix > 0 needs model\.explorer"),
        ("{}\n", ["schedule.nope=1"], r"schedule\.nope: unknown key"),
        ("{}\n", ["seed"], r"key\.sub=value"),
        ("seed: 3\n", ["seed.x=1"], r"seed: is not a section"),
        ("base: missing.yaml\n", [], r"no such config file"),
        ("algo: {ppo_epochs: 0}\n", [], r"algo: ppo_epochs must be >= 1"),
        (
            "{}\n",
            ["rollout.learner.engine.host=0.0.0.0"],
            r"rollout\.learner\.engine: host '0\.0\.0\.0' is not a loopback address: set api_key_env",
        ),
        ("algo: {dynamic_sampling_metric: score}\n", [], r"algo\.dynamic_sampling_metric: must be one of"),
        (
            "schedule: {prompts_per_step: 32}\n",
            ["algo.ppo_mini_batch_prompts=12"],
            r"prompts_per_step \(32\) must be a multiple of algo\.ppo_mini_batch_prompts \(12\)",
        ),
        (
            "schedule: {prompts_per_step: 32, group_size: 3}\nranks: 2\n",
            ["algo.ppo_mini_batch_prompts=1", "learner.parallel.micro_batch_size=2"],
            r"each optimizer update's 3 sequences .* divisible by data-parallel size \* "
            r"learner\.parallel\.micro_batch_size \(4\)",
        ),
        ("schedule: {mode: alternating}\n", [], r"schedule\.mode alternating needs schedule\.t_mix > 0"),
        (
            "algo: {explorer_mini_batch: samples}\n",
            [],
            r"algo\.explorer_mini_batch samples .* schedule\.mode combined",
        ),
        ("schedule: {rounding: floor}\n", [], r"schedule\.rounding: must be one of"),
        (
            "model: {explorer: x}\nschedule: {t_mix: 4, group_size: 8, prompts_per_step: 8}\n",
            [
                "schedule.mode=alternating",
                "schedule.rounding=ceil-both",
                "algo.explorer_mini_batch=samples",
                "algo.ppo_mini_batch_prompts=4",
                "learner.parallel.micro_batch_size=8",
            ],
            # 4-sample explorer updates fit in one micro-batch of 8; the learner's 4 x 3 rows do not split.
            r"learner rollout's batch or optimizer update of 12 sequences is not divisible by data-parallel "
            r"size \* learner\.parallel\.micro_batch_size \(8\)",
        ),
        (
            "model: {explorer: x}\nschedule: {t_mix: 4, group_size: 8, prompts_per_step: 2}\n",
            ["schedule.rounding=ceil-both", "learner.parallel.micro_batch_size=4"],
            r"combined rollout's batch or optimizer update of 18 sequences",  # 2 x (6 + 3) at step 2
        ),
        ("rollout: {overlap: 2}\n", [], r"rollout\.overlap: must be one of \[0, 1\]"),
        (
            "model: {explorer: x}\nschedule: {t_mix: 4}\n",
            ["rollout.overlap=1", "schedule.mode=alternating"],
            r"rollout\.overlap 1 needs schedule\.mode combined, got alternating",
        ),
        (
            "{}\n",
            ["rollout.overlap=1", "algo.dynamic_sampling=true"],
            r"rollout\.overlap 1 and algo\.dynamic_sampling",
        ),
        ("{}\n", ["rollout.overlap=1", "rollout.colocate=true"], r"rollout: colocate true with overlap 1"),
        (
            "algo: {rollout_correction: is}\n",
            [],
            r"algo\.rollout_correction: must be one of \['none', 'tis'\]",
        ),
        ("algo: {tis_cap: 0}\n", [], r"algo: tis_cap must be > 0"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text), overrides)


def test_base_cycle_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_build_defaults_and_int_accepted_for_float() -> None:
    assert build(S2LConfig, {}) == S2LConfig()
    cfg = build(S2LConfig, {"algo": {"loss": {"clip_low": 0}}})
    assert cfg.algo.loss.clip_low == 0.0 and isinstance(cfg.algo.loss.clip_low, float)


def test_exponent_without_a_dot_is_a_number_on_the_command_line_and_in_yaml(tmp_path: Path) -> None:
    """YAML 1.1 reads `1e-3` as a string; a float field takes it as the number it means."""
    write(tmp_path, "learner:\n  optimizer:\n    lr: 3e-4\n", "a.yaml")
    assert load_config(tmp_path / "a.yaml").learner.optimizer.lr == 3e-4
    assert load_config(tmp_path / "a.yaml", ["learner.optimizer.lr=1e-3"]).learner.optimizer.lr == 1e-3
    for bad in ("fast", "1e", "e-3", "1.2.3"):
        with pytest.raises(ConfigError, match="expected a number"):
            load_config(tmp_path / "a.yaml", [f"learner.optimizer.lr={bad}"])
    assert load_config(tmp_path / "a.yaml", ["name=1e-3"]).name == "1e-3"  # strings stay strings


def test_docs_config_reference_is_current() -> None:
    """docs/config.md is generated; regenerate with `s2l config --reference > docs/config.md`."""
    assert (ROOT / "docs" / "config.md").read_text() == config_reference()


def test_config_imports_without_the_http_and_engine_packages() -> None:
    """The run config is plain dataclasses: `s2l config` works where the HTTP packages and SGLang are
    absent (they were imported through the rollout and sync modules before)."""
    code = (
        "import sys\n"
        "for name in ('aiohttp', 'requests', 'httpx', 'sglang'):\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        "import megatron_s2l.config\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT / "tests")


def test_run_paths_live_in_the_run_directory(tmp_path: Path) -> None:
    """Two runs never share a scratch path (the disk transport deleted the other run's weights when
    both used runs/weight_sync), and the config file keeps them unset so they follow a moved run."""
    from megatron_s2l.run.rundir import RunDir

    cfg = load_config(ROOT / "yaml/demo-cpu.yaml")
    assert cfg.sync.disk_dir is None and cfg.rollout.log_dir is None
    a, b = RunDir(tmp_path / "a").resolve(cfg), RunDir(tmp_path / "b").resolve(cfg)
    assert a.sync.disk_dir == str(tmp_path / "a" / "weight-sync") != b.sync.disk_dir
    assert a.rollout.log_dir == str(tmp_path / "a" / "engine-logs") != b.rollout.log_dir
    assert cfg.sync.disk_dir is None  # resolve returns a new config
    shared = load_config(ROOT / "yaml/demo-cpu.yaml", ["sync.disk_dir=/shared/sync"])
    assert RunDir(tmp_path / "a").resolve(shared).sync.disk_dir == "/shared/sync"  # set: kept


def test_demo_trains_on_the_assets_it_built(tmp_path: Path) -> None:
    """`s2l demo --cache DIR` used to build models in DIR and train on cache/demo/."""
    from megatron_s2l.demo.assets import DemoAssets
    from megatron_s2l.demo.cli import BASELINE_CONFIG, DEMO_CONFIG, demo_overrides

    assets = DemoAssets(
        train_file=tmp_path / "train.jsonl",
        eval_file=tmp_path / "eval.jsonl",
        explorer_dir=tmp_path / "explorer",
        learner_dir=tmp_path / "learner",
    )
    cfg = load_config(ROOT / DEMO_CONFIG, demo_overrides(assets, explorer=True))
    assert cfg.model.learner == str(tmp_path / "learner") and cfg.model.explorer == str(tmp_path / "explorer")
    assert cfg.data.train_files == [str(tmp_path / "train.jsonl")]
    assert cfg.data.eval_files == [str(tmp_path / "eval.jsonl")]
    baseline = load_config(ROOT / BASELINE_CONFIG, demo_overrides(assets, explorer=False))
    assert baseline.model.explorer == "" and baseline.model.learner == str(tmp_path / "learner")


def test_logging_shows_info_and_filters_known_third_party_warnings() -> None:
    """Every entry point calls configure_logging: INFO lines appear (an unconfigured logger drops
    them), megatron-core's expected fallback warnings do not, other warnings still do."""
    code = (
        "import logging, warnings\n"
        "from megatron_s2l.logs import configure_logging\n"
        "configure_logging()\n"
        "logging.getLogger('megatron_s2l.x').info('derived numbers here')\n"
        "warnings.warn('Transformer Engine and Apex are not installed. Falling back to Torch optimizers.')\n"
        "warnings.warn('Apex is not installed. Falling back to Torch Norm')\n"
        "warnings.warn('a warning nobody expected')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT / "tests"
    )
    assert "derived numbers here" in out.stderr and "a warning nobody expected" in out.stderr
    assert "Transformer Engine" not in out.stderr and "Apex" not in out.stderr
