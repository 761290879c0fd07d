"""`s2l bench rollout --measured` end to end on CPU with real SGLang engines (tiny demo models, two
steps): every method's rows, the schedule's explorer share, and FLOPs that follow from each row."""

import csv
from pathlib import Path

import pytest

from megatron_s2l.algo import s2l_split
from megatron_s2l.archs import load_arch
from megatron_s2l.bench.rollout_flops import generation_flops
from megatron_s2l.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.sglang]

NUM_GPUS = 0
ROOT = Path(__file__).resolve().parents[2]
STEPS, T_MIX, GROUP, PROMPTS = 2, 2, 4, 2


def overrides(demo) -> list[str]:
    return [
        f"model.learner={demo.learner_dir}",
        f"model.explorer={demo.explorer_dir}",
        f"data.train_files=[{demo.train_file}]",
        f"data.eval_files=[{demo.eval_file}]",
        f"schedule.t_mix={T_MIX}",
        f"schedule.group_size={GROUP}",
        f"schedule.prompts_per_step={PROMPTS}",
        "learner.parallel.micro_batch_size=8",  # the config must stay valid for training
        "rollout.learner_sampling.max_new_tokens=12",
        "rollout.explorer_sampling.max_new_tokens=12",
    ]


def test_measured_three_methods(
    demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(ROOT)
    out_dir = tmp_path / "bench"
    argv = ["bench", "rollout", "--measured", "--config", "yaml/demo-cpu.yaml", *overrides(demo)]
    assert main([*argv, "--steps", str(STEPS), "--out-dir", str(out_dir)]) == 0
    stdout = capsys.readouterr().out
    assert "| S2L-PO |" in stdout and "| high-temp GRPO |" in stdout and "\nS2L-PO: " in stdout
    assert (out_dir / "rollout_measured.png").is_file()
    with (out_dir / "rollout_measured.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], int(r["step"])) for r in rows] == [
        (m, s) for m in ("s2l", "grpo", "hightemp") for s in range(1, STEPS + 1)
    ]
    by_method = {m: [r for r in rows if r["method"] == m] for m in ("s2l", "grpo", "hightemp")}
    assert float(by_method["s2l"][0]["tokens_explorer"]) > 0
    assert all(float(r["tokens_explorer"]) == 0 for m in ("grpo", "hightemp") for r in by_method[m])
    for step in range(STEPS):  # the same prompts for every method
        assert len({by_method[m][step]["prompt_len"] for m in by_method}) == 1

    archs = {"learner": load_arch(demo.learner_dir), "explorer": load_arch(demo.explorer_dir)}
    for row in rows:
        t_mix = T_MIX if row["method"] == "s2l" else 0
        g_w, g_s = s2l_split(int(row["step"]), t_mix, GROUP)
        samples = {s: int(row[f"samples_{s}"]) for s in archs}
        assert samples == {"explorer": PROMPTS * g_w, "learner": PROMPTS * g_s}
        assert int(row["prompts"]) == PROMPTS and sum(samples.values()) == PROMPTS * GROUP
        for source, arch in archs.items():
            expected = generation_flops(
                arch,
                float(row[f"tokens_{source}"]),
                float(row[f"mean_len_{source}"]),
                float(row["prompt_len"]),
            )
            assert float(row[f"flops_{source}"]) == pytest.approx(expected, rel=1e-12)
        assert float(row["flops"]) == pytest.approx(
            float(row["flops_explorer"]) + float(row["flops_learner"])
        )
        assert float(row["seconds"]) > 0
