"""`s2l train` end to end on CPU with real SGLang engines (tiny demo models, a few steps):
the schedule's G_w/G_s per step, learner engines re-synced every step while the explorer is never
touched, finite losses, and exact resume after SIGKILL.

Two runs start engines of their own (`full_run`, and the fault run that checks that a killed
trainer's engines die with it and hands the explorer's engine over to the learner); the others
attach to the session's shared `s2l serve` engines (`served`), as a cluster job attaches to an engine
node's, which saves two or three server starts per run.
"""

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from signal import SIGKILL

import pytest
from served_fixtures import attach

from megatron_s2l.algo import s2l_split
from megatron_s2l.run.metrics import read_metrics
from megatron_s2l.run.phases import read_status

pytestmark = [pytest.mark.slow, pytest.mark.sglang]

ROOT = Path(__file__).resolve().parents[2]
STEPS, T_MIX, GROUP = 4, 3, 4


def overrides(demo, run_root: Path, name: str) -> list[str]:
    return [
        f"name={name}",
        f"logging.run_dir={run_root}/{{name}}",
        "logging.tensorboard=false",
        f"model.learner={demo.learner_dir}",
        f"model.explorer={demo.explorer_dir}",
        f"data.train_files=[{demo.train_file}]",
        f"data.eval_files=[{demo.eval_file}]",
        f"schedule.steps={STEPS}",
        f"schedule.t_mix={T_MIX}",
        f"schedule.group_size={GROUP}",
        "schedule.prompts_per_step=2",
        "learner.parallel.micro_batch_size=8",
        "checkpoint.every_steps=2",
        "eval.every_steps=2",
        "eval.samples_per_prompt=2",
        "rollout.learner_sampling.max_new_tokens=12",
        "rollout.explorer_sampling.max_new_tokens=12",
    ]


def s2l(*args: str, **kwargs) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "s2l"), *args]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def full_run(demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    out = finish(s2l("train", "--config", "yaml/demo-cpu.yaml", *overrides(demo, root, "full")))
    assert f"step {STEPS}/{STEPS}" in out
    # The derived numbers, once at start-up, and no known third-party warning.
    assert "learner ranks 1 = TP 1 x PP 1 x DP 1" in out and "1 optimizer updates of 8 samples" in out
    assert "Transformer Engine and Apex" not in out
    return root / "full"


def test_schedule_versions_and_finite_metrics(full_run: Path) -> None:
    records = read_metrics(full_run)
    assert [r["step"] for r in records] == list(range(STEPS + 1))  # step 0: the eval before training
    for r in records[1:]:
        g_w, g_s = s2l_split(r["step"], T_MIX, GROUP)
        assert (r["schedule/g_explorer"], r["schedule/g_learner"]) == (g_w, g_s)
        assert r["rollout/explorer_samples"] == 2 * g_w and r["rollout/learner_samples"] == 2 * g_s
        # Samples of step k come from the weights of step k - 1; the explorer is never updated.
        if g_s:
            assert r["rollout/learner_weight_version"] == (
                "default" if r["step"] == 1 else str(r["step"] - 1)
            )
        if g_w:
            assert r["rollout/explorer_weight_version"] == "default"
        assert r["weight_version"] == r["step"] and r["rollout/stale_learner_samples"] == 0
        for key in ("loss/total", "reward/mean", "train/grad_norm"):
            assert math.isfinite(r[key]), key
    assert "eval/avg_at_k" in records[0] and "eval/avg_at_k" in records[STEPS]
    assert (full_run / "checkpoints" / "latest").read_text() == f"step_{STEPS:06d}"


def sglang_servers_of(model_dir: Path) -> list[int]:
    """PIDs of live SGLang servers serving `model_dir`."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"sglang.launch_server" in cmdline and str(model_dir).encode() in cmdline and state != "Z":
            pids.append(int(entry))
    return pids


def test_ppo_mini_batches_and_kl_loss_then_changed_base_is_refused(demo, served, tmp_path: Path) -> None:
    """The paper's update recipe at demo size: 4 optimizer updates per step over mini-batches of whole
    groups, the KL loss to the frozen base, and requests far past the client's batch x concurrency
    (on the shared engines, two for the learner)."""
    base = tmp_path / "base" / demo.learner_dir.name  # attached engines are matched by directory name
    shutil.copytree(demo.learner_dir, base)
    extra = [
        f"model.learner={base}",
        "schedule.prompts_per_step=8",
        "algo.ppo_mini_batch_prompts=2",
        "algo.loss.kl_coef=0.001",
        "learner.parallel.micro_batch_size=4",
        "checkpoint.every_steps=0",
        "eval.every_steps=0",
        "rollout.client.batch_size=2",
        "rollout.client.max_concurrency=2",
        # The test's tiny models rarely answer right, so most groups carry no reward signal; the
        # entropy bonus moves the policy in every update all the same, so the later mini-batches
        # of a step see ratios away from 1 and the policy away from the reference.
        "algo.loss.entropy_coef=0.01",
        *attach(served),
    ]
    run_dir = tmp_path / "ppo"
    finish(s2l("train", "--config", "yaml/demo-cpu.yaml", *overrides(demo, tmp_path, "ppo"), *extra))
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        assert r["train/updates"] == 4 and r["train/skipped"] == 0
        assert r["train/approx_kl"] != 0.0  # later mini-batches see a moved policy
        assert math.isfinite(r["loss/kl"]) and r["loss/kl"] > 0
        assert r["rollout/learner_samples"] + r["rollout/explorer_samples"] == 8 * GROUP

    # A resume rebuilds the reference from model.learner: a changed base checkpoint is refused.
    config = json.loads((base / "config.json").read_text())
    config["rms_norm_eps"] = 2e-6
    (base / "config.json").write_text(json.dumps(config))
    proc = s2l("train", "--resume", str(run_dir))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "is not the base checkpoint" in out, out[-2000:]


def _logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError):  # a line being written
            steps.append(json.loads(line)["step"])
    return steps


def wait_for_phase(proc: subprocess.Popen, run_dir: Path, target: tuple[int, str]) -> None:
    """Poll the run's status.json until it enters `target` = (step, phase)."""
    deadline = time.monotonic() + 600
    while (status := read_status(run_dir / "status.json")) is None or (
        status["step"],
        status["phase"],
    ) != target:
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, f"never reached {target}; last status {status}"
        time.sleep(0.005)


def kill_trainer(proc: subprocess.Popen, model_dir: Path) -> None:
    """SIGKILL the trainer's process group; its engines (started by it: PR_SET_PDEATHSIG) die too."""
    assert sglang_servers_of(model_dir), "the run's engines are up"
    os.killpg(proc.pid, SIGKILL)
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while sglang_servers_of(model_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not sglang_servers_of(model_dir), "an engine of the killed trainer is still running"


def engines_of(model_dir: Path) -> set[int]:
    """Process groups of live SGLang servers of `model_dir`: one per engine (its helpers share it)."""
    groups = set()
    for pid in sglang_servers_of(model_dir):
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    return groups


GENERATE = '"POST /generate HTTP/1.1" 200'
READY = "The server is fired up and ready to roll!"  # after its one warm-up /generate


def test_sigkill_in_each_phase_and_the_explorer_hand_over_then_resume_in_a_moved_directory(
    demo, full_run: Path
) -> None:
    """SIGKILL the trainer as it enters a checkpoint write (step 1), the weight sync (step 2), the
    rollout (step 4) and training (step 4), read from the run's status.json, resuming after each
    kill; after the third, the run directory is moved and resumed there. The run finishes in the new
    place with every step logged exactly once, its last checkpoint in place, no engine of any killed
    trainer left running, and the same schedule, data order and weight versions as an uninterrupted
    run.

    The run hands the explorer's core over after T_mix (`rollout.explorer_hand_over`, off in the
    demo's config): steps 1-2 carry explorer samples (G_w = 4, 2), so at step 3 the explorer engine
    is stopped and a second learner engine starts on its core, synced to the weights after step 2,
    and serves part of step 3's rollout; the runs resumed after step 3 start no explorer engine and
    two learner engines."""
    root = full_run.parent
    run_dir = root / "chaos"
    args = [
        *overrides(demo, root, "chaos"),
        "checkpoint.every_steps=1",  # eval at steps 0, 2, 4
        "rollout.explorer_hand_over=true",
        "rollout.client.batch_size=2",  # requests of 2 samples: both learner engines get some
    ]
    assert [s2l_split(step, T_MIX, GROUP)[0] for step in range(1, STEPS + 1)] == [4, 2, 0, 0]
    proc = s2l("train", "--config", "yaml/demo-cpu.yaml", *args)
    targets = ((1, "checkpoint"), (2, "sync"), (4, "rollout"), (4, "train"))
    for target in targets:
        if target == (4, "rollout"):
            wait_for_phase(proc, run_dir, (T_MIX, "rollout"))  # after the hand-over of step T_MIX
            assert not sglang_servers_of(demo.explorer_dir), "the explorer engine outlived the hand-over"
            assert len(engines_of(demo.learner_dir)) == 2
        wait_for_phase(proc, run_dir, target)
        if target[0] < T_MIX:
            assert len(engines_of(demo.explorer_dir)) == 1 and len(engines_of(demo.learner_dir)) == 1
        else:  # a run resumed after the hand-over starts in its layout
            assert not sglang_servers_of(demo.explorer_dir) and len(engines_of(demo.learner_dir)) == 2
        kill_trainer(proc, demo.learner_dir)  # the hand-over's engine dies with the trainer too
        if target == (4, "rollout"):
            moved = root / "moved"
            shutil.move(run_dir, moved)
            run_dir = moved
            refused = s2l("train", "--resume", str(run_dir), "name=other")
            out, _ = refused.communicate(timeout=120)
            assert refused.returncode == 2 and "a resumed run stays in" in out, out[-2000:]
        proc = s2l("train", "--resume", str(run_dir))
    out = finish(proc)
    assert "learner engines: 2 x TP 1" in out and "explorer engines:" not in out, out[-3000:]
    assert not (root / "chaos").exists()  # nothing written to the old place after the move
    # Each step once, in order; step 0 (the evaluation before training) is not repeated by a resume.
    assert _logged_steps(run_dir) == list(range(STEPS + 1))
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step_{STEPS:06d}"
    records = read_metrics(run_dir)[1:]  # after step 0 (the evaluation before training)
    assert all(math.isfinite(r["loss/total"]) for r in records)
    assert [r["weight_version"] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        step, handed_over = r["step"], r["step"] >= T_MIX
        assert r["rollout/learner_engines"] == (2 if handed_over else 1), step
        assert r["rollout/explorer_engines"] == (0 if handed_over else 1), step
        # Step 3 was logged by the run that handed over; step 4 by one that started after it.
        assert ("time/hand_over" in r) == (step == T_MIX), step
        assert r["rollout/explorer_samples"] == 2 * s2l_split(step, T_MIX, GROUP)[0]
        assert r["rollout/stale_learner_samples"] == 0
    # The hand-over's engine (learner1's first launch in its log) served part of step 3's rollout,
    # after SGLang's warm-up request.
    first_launch = re.split(r"^=== ", (run_dir / "engine-logs" / "learner1.log").read_text(), flags=re.M)[1]
    assert first_launch.split(READY, 1)[1].count(GENERATE) >= 1

    full = {r["step"]: r for r in read_metrics(full_run)}
    resumed = {r["step"]: r for r in records}
    # Exact after resume: schedule position, data order and weight versions (the learner's own state
    # is restored bit-exactly: tests/integration/test_learner_checkpoint.py). Sampled tokens, and so
    # rewards and losses, are not: SGLang 0.5.23 honours per-request sampling seeds only with
    # --enable-deterministic-inference, which its CPU (torch_native) attention does not support.
    exact = [
        "schedule/g_explorer",
        "schedule/g_learner",
        "data/epoch",
        "data/position",
        "weight_version",
        "rollout/learner_weight_version",
    ]
    for step in range(2, STEPS + 1):
        for key in exact:
            assert resumed[step][key] == full[step][key], (step, key)
        assert math.isfinite(resumed[step]["loss/total"])
    assert resumed[2]["data/position"] == full[2]["data/position"] > 0


def test_explorer_cache_fill_train_kill_resume_draws_each_sample_once(demo, served, tmp_path: Path) -> None:
    """tools/fill_explorer_cache.py fills the cache from the run's own config; the run draws its
    explorer samples from it (no explorer engine), is SIGKILLed after its step-2 checkpoint and
    resumed. Two prompts, both in every step, and exactly as many cached samples per prompt as the
    run needs: the run finishes having drawn every one of them once (a resume that forgot the
    position would redraw from the start and end short; one that drew twice would run out). The fill
    tool and the run use the shared engines."""
    train = tmp_path / "two.jsonl"
    train.write_text("".join(demo.train_file.read_text().splitlines(keepends=True)[:2]))
    needed = sum(s2l_split(step, T_MIX, GROUP)[0] for step in range(1, STEPS + 1))
    cache = tmp_path / "explorer_cache.jsonl"
    args = [
        *overrides(demo, tmp_path, "cached"),
        f"data.train_files=[{train}]",
        "checkpoint.every_steps=1",
        "eval.every_steps=0",
        f"rollout.explorer_cache_path={cache}",
        *attach(served),
    ]
    fill_tool = [sys.executable, "tools/fill_explorer_cache.py", "--samples-per-prompt", str(needed)]
    fill = subprocess.run(
        [*fill_tool, "--config", "yaml/demo-cpu.yaml", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fill.returncode == 0, fill.stderr[-4000:]
    assert "2/2 prompts cached" in fill.stdout
    assert len(cache.read_text().splitlines()) == 2 * needed

    run_dir = tmp_path / "cached"
    proc = s2l("train", "--config", "yaml/demo-cpu.yaml", *args)
    wait_for_phase(proc, run_dir, (3, "rollout"))
    os.killpg(proc.pid, SIGKILL)
    proc.communicate(timeout=60)
    out = finish(s2l("train", "--resume", str(run_dir)))
    assert not sglang_servers_of(demo.explorer_dir), out[-2000:]  # the cache replaced the engine

    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        g_w = s2l_split(r["step"], T_MIX, GROUP)[0]
        assert r["rollout/explorer_from_cache"] == float(g_w > 0)
        assert r["rollout/explorer_samples"] == 2 * g_w
    import torch

    loop = torch.load(run_dir / "checkpoints" / f"step_{STEPS:06d}" / "loop.pt", weights_only=False)
    assert loop["driver"]["explorer_cache"]["drawn"] == {"train-0": needed, "train-1": needed}


def test_eval_of_a_run_checkpoint_and_a_base_model(demo, full_run: Path, tmp_path: Path) -> None:
    """`s2l eval` on the run's last checkpoint (exported on the fly) and on the base model, over two
    eval files: the JSON has pass@1 == avg@n and pass@k non-decreasing in k, per source; the
    per-sample JSONL adds up to it; the export holds the checkpoint's weights."""
    from safetensors.torch import load_file

    csqa = tmp_path / "csqa.jsonl"
    rows = [
        {
            "data_source": "commonsense_qa",
            "prompt": [
                {"role": "user", "content": f"Pick one.\n\nA. 1 + {i}\nB. 2\n\nAnswer with only the letter."}
            ],
            "reward_model": {"ground_truth": "B", "style": "rule"},
        }
        for i in range(2)
    ]
    csqa.write_text("".join(json.dumps(row) + "\n" for row in rows))
    n = 4
    args = ["--model", f"{full_run}@{STEPS}", "--model", str(demo.learner_dir), "--data", str(demo.eval_file)]
    args += ["--data", str(csqa), "--n", str(n), "--template", "raw", "--log-dir", str(tmp_path / "logs")]
    args += ["--max-new-tokens", "16"]  # the tiny models ramble to the context's end otherwise
    args += ["--output", str(tmp_path / "r.json"), "--samples", str(tmp_path / "s.jsonl")]
    out = finish(s2l("eval", *args, "--plot", str(tmp_path / "c.png")))
    assert "| model | source | problems | avg@n | pass@1 | pass@2 | pass@4 | maj@n |" in out

    reports = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["model"] for r in reports] == [f"full@{STEPS}", demo.learner_dir.name]
    samples = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    num_problems = len(demo.eval_file.read_text().splitlines()) + len(rows)
    assert len(samples) == 2 * num_problems * n
    for report in reports:
        assert report["n"] == n and report["problems"] == num_problems
        assert set(report["by_source"]) == {"synthetic_arith", "commonsense_qa"}
        for row in [report, *report["by_source"].values()]:
            assert list(row["pass@k"]) == ["1", "2", "4"]
            assert row["pass@k"]["1"] == pytest.approx(row["avg@n"])
            values = list(row["pass@k"].values())
            assert values == sorted(values)
        mine = [s["correct"] for s in samples if s["model"] == report["model"]]
        assert report["avg@n"] == pytest.approx(sum(mine) / len(mine))
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"

    exported = full_run / "export" / f"step_{STEPS:06d}"
    assert (exported / "config.json").is_file() and (exported / "tokenizer.json").is_file()
    trained = {k: v for f in exported.glob("*.safetensors") for k, v in load_file(f).items()}
    base = {k: v for f in demo.learner_dir.glob("*.safetensors") for k, v in load_file(f).items()}
    assert trained.keys() == base.keys()
    # The export holds the checkpoint's weights: moved from the base exactly when an update had a
    # gradient (the tiny run's groups can all have equal rewards, and then nothing moves).
    moved = any(r["train/grad_norm"] > 0 for r in read_metrics(full_run)[1:])
    difference = max((trained[k].float() - base[k].float()).abs().max().item() for k in base)
    assert (difference > 1e-6) == moved, (difference, moved)
