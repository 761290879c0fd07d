"""`s2l logprobs` end to end: the command launches its own 2 gloo ranks (TP=2) and writes, for
sequences of different lengths, the log-probs transformers gives. Needs 0 GPUs.

    .venv/bin/pytest tests/integration/test_learner_logprobs_cli.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def test_cli_logprobs_match_transformers(tiny_qwen3_dirs, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    hf_dir = tiny_qwen3_dirs["untied"]
    generator = torch.Generator().manual_seed(11)
    sequences = [torch.randint(0, 512, (n,), generator=generator).tolist() for n in (9, 4, 2)]
    (tmp_path / "in.json").write_text(json.dumps(sequences))
    command = [
        sys.executable,
        "-m",
        "megatron_s2l.cli",
        "logprobs",
        "--model",
        str(hf_dir),
        "--tp",
        "2",
        "--input",
        str(tmp_path / "in.json"),
        "--output",
        str(tmp_path / "out.json"),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "out.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    assert [len(r) for r in rows] == [len(s) - 1 for s in sequences]
    for seq, row in zip(sequences, rows, strict=True):
        ids = torch.tensor([seq])
        with torch.no_grad():
            logp = model(ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
        assert (torch.tensor(row) - logp).abs().max().item() <= 1e-4
