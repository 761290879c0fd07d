"""Run logs: metrics.jsonl survives a resume (last record per step wins), plots are real PNGs."""

import io
import json
from pathlib import Path

from megatron_s2l.run.metrics import RunLogger, progress_line, read_metrics
from megatron_s2l.run.plot import plot_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def log_run(run_dir: Path, steps: range, offset: float = 0.0) -> None:
    logger = RunLogger(run_dir, tensorboard=True, total_steps=6, out=io.StringIO())
    for step in steps:
        logger.log(
            step,
            {
                "schedule/g_explorer": max(0, 4 - step),
                "schedule/g_learner": min(8, 4 + step),
                "reward/mean": 0.1 * step + offset,
                "acc/mean": 0.05 * step + offset,
            },
        )
    logger.close()


def test_metrics_jsonl_and_resume_overwrite(tmp_path: Path) -> None:
    log_run(tmp_path / "run", range(1, 5))
    log_run(tmp_path / "run", range(3, 7), offset=1.0)  # resumed from step 2: steps 3..6 logged anew
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[1]["reward/mean"] == 0.2 and records[2]["reward/mean"] == 1.3
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(line)["step"] for line in lines)
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_plots_are_pngs_for_one_and_two_runs(tmp_path: Path) -> None:
    log_run(tmp_path / "s2l", range(1, 7))
    log_run(tmp_path / "grpo", range(1, 7), offset=-0.1)
    for runs in ([tmp_path / "s2l"], [tmp_path / "s2l", tmp_path / "grpo"]):
        paths = plot_runs(runs, tmp_path / f"plots{len(runs)}")
        assert [p.name for p in paths] == ["curves.png", "explorer_share.png"]
        assert all(p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000 for p in paths)


def test_progress_line_shows_the_step() -> None:
    line = progress_line(
        3, 12, {"schedule/g_explorer": 6, "schedule/g_learner": 2, "acc/explorer": 0.75, "time/rollout": 4.25}
    )
    assert line.startswith("step 3/12 | G_w/G_s 6/2") and "acc e 75%" in line and "rollout 4.2s" in line
