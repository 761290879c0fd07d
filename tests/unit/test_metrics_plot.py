"""Run logs: metrics.jsonl survives a resume (last record per step wins), plots are real PNGs."""

import io
import json
from pathlib import Path

from megatron_s2l.run.metrics import RunLogger, progress_line, read_metrics
from megatron_s2l.run.plot import plot_runs
from megatron_s2l.run.rundir import RunDir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def log_run(run_dir: Path, steps: range, offset: float = 0.0) -> None:
    logger = RunLogger(RunDir(run_dir), tensorboard=True, total_steps=6, out=io.StringIO())
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


def test_progress_line_at_step_zero_shows_the_evaluation() -> None:
    line = progress_line(0, 12, {"eval/avg_at_k": 0.109, "eval/pass_at_k": 0.4375})
    assert line == "step 0/12 (before training) | eval avg@k 0.109 pass@k 0.438"
    assert progress_line(4, 12, {"eval/avg_at_k": 0.2, "eval/pass_at_k": 0.5}).endswith("pass@k 0.500")


def test_resume_keeps_each_step_once(tmp_path: Path) -> None:
    """A run killed after logging step 4 but checkpointed at step 2 (and killed mid-write of a line)
    resumes at step 3: steps 3 and 4 are logged again, and the file holds every step once."""
    run = RunDir(tmp_path / "run")
    log_run(run.root, range(5))
    with run.metrics_file.open("a") as f:
        f.write('{"step": 5, "reward/me')  # the kill cut this line short
    logger = RunLogger(run, tensorboard=False, total_steps=6, out=io.StringIO())
    logger.keep_steps_through(2)
    for step in (3, 4, 5, 6):
        logger.log(step, {"reward/mean": 10.0 + step})
    logger.close()
    steps = [json.loads(line)["step"] for line in run.metrics_file.read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5, 6]
    assert [r["reward/mean"] for r in read_metrics(run.root)][3:] == [13.0, 14.0, 15.0, 16.0]

    logger = RunLogger(run, tensorboard=False, total_steps=6, out=io.StringIO())
    logger.keep_steps_through(-1)  # resumed before the first checkpoint: the run starts over
    logger.close()
    assert run.metrics_file.read_text() == ""


def test_every_curve_stays_inside_its_axes(tmp_path: Path) -> None:
    """The explorer's line used to run along the frame (matplotlib's 5% margins); every line now keeps
    at least 8% of the axis height clear above and below it."""
    import matplotlib

    matplotlib.use("Agg")
    from megatron_s2l.run.plot import curves_figure

    run = RunDir(tmp_path / "run")
    logger = RunLogger(run, tensorboard=False, total_steps=4, out=io.StringIO())
    for step, (explorer, learner) in enumerate([(-0.2, None), (-0.5, 0.9), (-0.1, 1.0), (None, 0.7)], 1):
        logger.log(
            step,
            {
                "reward/mean": 0.0,
                "reward/explorer": explorer,
                "reward/learner": learner,
                "acc/mean": 0.5,
                "eval/avg_at_k": 0.1 * step,
            },
        )
    logger.close()
    fig = curves_figure({"run": read_metrics(run.root)})
    for ax in fig.axes:
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        room = 0.08 * (y1 - y0)
        for line in ax.get_lines():
            xs, ys = list(line.get_xdata()), list(line.get_ydata())
            assert all(x0 < x < x1 for x in xs), ax.get_title()
            assert all(y0 + room <= y <= y1 - room for y in ys), (ax.get_title(), line.get_label())
