"""The `s2l` console script as a user runs it."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def s2l(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "s2l"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_schedule_json() -> None:
    out = s2l("schedule", "--steps", "6", "--t-mix", "4", "--group-size", "9", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["step"], r["g_explorer"], r["g_learner"]) for r in rows] == [
        (1, 9, 0),
        (2, 6, 3),
        (3, 3, 6),
        (4, 0, 9),
        (5, 0, 9),
        (6, 0, 9),
    ]
    assert rows[1]["alpha"] == 2 / 3 and set(rows[0]) == {"step", "alpha", "g_explorer", "g_learner"}


def test_schedule_rounding_ceil_both_as_the_released_8b_run() -> None:
    """The released 8B run (T = 16, T_mix = 8, G = 16) rounds both counts up: steps 2-7 carry 17
    samples per prompt; alpha = 1 - (t - 1) / (T_mix - 1)."""
    args = ("schedule", "--steps", "16", "--t-mix", "8", "--group-size", "16", "--json")
    rows = json.loads(s2l(*args, "--rounding", "ceil-both").stdout)
    hand = [
        (math.ceil((1 - (t - 1) / 7) * 16 - 1e-9), math.ceil((t - 1) / 7 * 16 - 1e-9)) for t in range(1, 9)
    ]
    assert [(r["g_explorer"], r["g_learner"]) for r in rows[:8]] == hand
    assert [r["g_explorer"] + r["g_learner"] for r in rows] == [16] + [17] * 6 + [16] * 9
    exact = json.loads(s2l(*args).stdout)
    assert all(r["g_explorer"] + r["g_learner"] == 16 for r in exact)
    assert s2l(*args, "--rounding", "floor").returncode == 2


def test_schedule_table_and_t_mix_beyond_run() -> None:
    out = s2l("schedule", "--steps", "2", "--t-mix", "5", "--group-size", "8")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[1].split() == ["1", "1.0000", "8", "0"]
    assert lines[2].split() == ["2", "0.7500", "6", "2"]
    assert "still mixing" in out.stdout


def test_bad_arguments_exit_2_with_message() -> None:
    out = s2l("schedule", "--steps", "0", "--t-mix", "1", "--group-size", "8")
    assert out.returncode == 2 and "steps must be >= 1" in out.stderr


def test_config_prints_resolved_yaml_and_reports_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("schedule: {steps: 3}\n")
    out = s2l("config", str(path), "schedule.group_size=4")
    assert out.returncode == 0 and "group_size: 4" in out.stdout and "steps: 3" in out.stdout
    bad = s2l("config", str(path), "schedule.bogus=1")
    assert bad.returncode == 2 and "schedule.bogus: unknown key" in bad.stderr


def test_export_is_a_command_and_refuses_before_any_rank(tmp_path: Path) -> None:
    """`s2l export RUN_DIR@STEP --output DIR` is listed and checks its argument and the run directory
    before starting a learner (the export itself: tests/integration/test_export_cli.py)."""
    assert "export" in s2l("--help").stdout
    usage = s2l("export", "--help")
    assert usage.returncode == 0 and "RUN_DIR@STEP" in usage.stdout and "--output" in usage.stdout
    out = s2l("export", f"{tmp_path}@x")
    assert out.returncode == 2 and "expected RUN_DIR@STEP with an integer step" in out.stderr
    out = s2l("export", f"{tmp_path}@4", "--output", str(tmp_path / "hf"))
    assert out.returncode == 2 and "is not a run directory" in out.stderr
