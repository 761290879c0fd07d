"""tools/nccl_check.py on recorded nccl-tests output (tests/assets/nccl/, written in nccl-tests' own
column layout): busbw read exactly (out-of-place, sizes >= 1 GiB), verdicts against the floors, the
node or NIC named when short, malformed logs, the mpirun and srun command lines of --dry-run, a run
through a stand-in launcher, and exit codes."""

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

NUM_GPUS = 0
ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "tests" / "assets" / "nccl"

_spec = importlib.util.spec_from_file_location("nccl_check", ROOT / "tools" / "nccl_check.py")
nccl_check = importlib.util.module_from_spec(_spec)
sys.modules["nccl_check"] = nccl_check  # dataclasses look their module up while the file executes
_spec.loader.exec_module(nccl_check)

DGX_HCA = "=mlx5_0,mlx5_3,mlx5_4,mlx5_5,mlx5_6,mlx5_9,mlx5_10,mlx5_11"
BENCH = "-b 1G -e 8G -f 2 -g 1"

# A run that died in NCCL's set-up: nccl-tests' header, no result row.
CRASHED = """\
# nccl-tests version 2.17.6 nccl-headers=22705 nccl-library=22705
# Collective test starting: all_reduce_perf
# nThread 1 nGpus 1 minBytes 1073741824 maxBytes 8589934592 step: 2(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0
#
# Using devices
#  Rank  0 Group  0 Pid 410000 on     node-a device  0 [0000:18:00] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid 410101 on     node-b device  0 [0000:18:00] NVIDIA H100 80GB HBM3
node-a:410000:410000 [0] NCCL INFO Bootstrap: Using docker0:172.17.0.1<0>
node-a:410000:410061 [0] misc/socket.cc:484 NCCL WARN socketStartConnect: Connect to 172.17.0.1<41217> failed : Software caused connection abort
node-a:410000:410061 [0] NCCL INFO misc/socket.cc:565 -> 2
node-a: Test NCCL failure common.cu:1005 'unhandled system error (run with NCCL_DEBUG=INFO for details) / '
"""  # noqa: E501

HEADER = """\
#                                                              out-of-place                       in-place
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)
"""  # noqa: E501


def single_node(test: str, rows: str, host: str = "node-a") -> str:
    """nccl-tests output of one 8-GPU run on `host`, with the given table rows."""
    devices = "".join(
        f"#  Rank {r:2d} Group  0 Pid {410000 + r:6d} on {host:>10s} device {r:2d} [0000:18:00]"
        " NVIDIA H100 80GB HBM3\n"
        for r in range(8)
    )
    return (
        "# nccl-tests version 2.17.6 nccl-headers=22705 nccl-library=22705\n"
        f"# Collective test starting: {test}\n"
        "# nThread 1 nGpus 1 minBytes 1073741824 maxBytes 4294967296 step: 2(factor) warmup iters: 5"
        f" iters: 20 agg iters: 1 validation: 1 graph: 0\n#\n# Using devices\n{devices}#\n{HEADER}{rows}"
        "# Out of bounds values : 0 OK\n# Avg bus bandwidth    : 300 \n#\n"
        f"# Collective test concluded: {test}\n"
    )


BROADCAST_ROWS = """\
  1073741824     268435456     float    none       0  3016.62  355.95  355.95       0  3010.70  356.65  356.65       0
  2147483648     536870912     float    none       0  5947.87  361.05  361.05       0  5941.62  361.43  361.43       0
  4294967296    1073741824     float    none       0  11823.0  363.27  363.27       0  11819.8  363.37  363.37       0
"""  # noqa: E501
ALL_GATHER_WRONG_ROWS = """\
  1073741824      33554432     float    none      -1  2557.05  419.92  367.43       0  2552.48  420.67  368.09     N/A
  2147483648      67108864     float    none      -1  5078.17  422.89  370.03       3  5069.43  423.62  370.67     N/A
  4294967296     134217728     float    none      -1  10130.9  423.95  370.96       0  10118.3  424.48  371.42     N/A
"""  # noqa: E501


def read(name: str) -> str:
    return (ASSETS / name).read_text()


def only(verdicts: list[Any]) -> Any:
    assert len(verdicts) == 1
    return verdicts[0]


# ---------------------------------------------------------------- parsing and verdicts


def test_single_node_pass_reads_out_of_place_busbw_at_1_gib_and_above() -> None:
    text = read("all_reduce_node_pass.log")
    run = nccl_check.parse_run(nccl_check.split_runs(text)[0])
    assert run.test == "all_reduce_perf"
    assert run.rank_hosts == ["node-a"] * 8
    assert run.avg_busbw == 454.486
    assert [row.size for row in run.rows] == [2**28 * 2**k for k in range(6)]
    first = nccl_check.Row(size=268435456, busbw_out_of_place=398.41, busbw_in_place=397.95, wrong=0)
    assert run.rows[0] == first
    verdict = only(nccl_check.analyze(text))
    # the in-place column peaks higher (483.50 at 4 GiB) but only out-of-place is judged
    assert (verdict.busbw, verdict.busbw_in_place) == (481.12, 483.50)
    assert (verdict.test, verdict.scope, verdict.subject) == ("all_reduce_perf", "single-node", "node-a")
    assert (verdict.expected, verdict.floor, verdict.status, verdict.note) == ("480", 430.0, "PASS", "")


def test_the_short_node_among_two_is_named() -> None:
    verdicts = nccl_check.analyze(read("all_reduce_two_nodes.log"))
    assert [(v.subject, v.busbw, v.status) for v in verdicts] == [
        ("node-a", 480.46, "PASS"),
        ("node-b", 301.37, "FAIL"),
    ]
    assert nccl_check.short_names(verdicts) == ["node-b"]
    table = nccl_check.format_table(verdicts)
    assert "FAIL node-b: all_reduce_perf single-node busbw 301.37 GB/s < 430" in table
    assert table.endswith("short: node-b")


def test_cross_node_ring_passes_at_350_and_records_each_nodes_nics() -> None:
    verdict = only(nccl_check.analyze(read("all_reduce_cross_ring_pass.log")))
    assert (verdict.scope, verdict.subject, verdict.busbw, verdict.status) == (
        "cross-node",
        "node-a,node-b",
        350.21,
        "PASS",
    )
    assert (verdict.expected, verdict.floor) == ("370-385", 330.0)
    nics = [f"mlx5_{k}" for k in range(8)]
    assert verdict.nics == {"node-a": nics, "node-b": nics}


def test_cross_node_ring_fails_at_250() -> None:
    verdict = only(nccl_check.analyze(read("all_reduce_cross_ring_fail.log")))
    assert (verdict.scope, verdict.subject, verdict.busbw, verdict.status) == (
        "cross-node",
        "node-a,node-b",
        250.08,
        "FAIL",
    )
    assert (
        "FAIL node-a,node-b: all_reduce_perf cross-node busbw 250.08 GB/s < 330"
        in nccl_check.format_table([verdict])
    )


def test_per_nic_pairs_name_the_short_nic_and_its_node() -> None:
    verdicts = nccl_check.analyze(read("per_nic.log"))
    assert [v.scope for v in verdicts] == ["per-NIC"] * 8
    assert [v.busbw for v in verdicts] == [47.31, 47.12, 46.95, 25.04, 47.26, 46.88, 47.40, 47.05]
    assert [v.subject for v in verdicts if v.status == "PASS"] == [
        f"node-b:mlx5_{k}" for k in (0, 1, 2, 4, 5, 6, 7)
    ]
    short = verdicts[3]
    assert (short.subject, short.status, short.floor, short.note) == (
        "node-b:mlx5_3",
        "FAIL",
        40.0,
        "peer node-a:mlx5_3",
    )
    assert short.nics == {"node-a": ["mlx5_3"], "node-b": ["mlx5_3"]}
    assert nccl_check.short_names(verdicts) == ["node-b:mlx5_3"]
    assert "FAIL node-b:mlx5_3: all_reduce_perf per-NIC busbw 25.04 GB/s < 40 (peer node-a:mlx5_3)" in (
        nccl_check.format_table(verdicts)
    )


def test_runs_concatenated_in_one_log_are_told_apart() -> None:
    names = [
        "all_reduce_cross_ring_fail.log",
        "all_reduce_node_pass.log",
        "all_reduce_two_nodes.log",
        "per_nic.log",
    ]
    verdicts = nccl_check.analyze("".join(read(name) for name in names))
    assert len(verdicts) == 1 + 1 + 2 + 8
    assert nccl_check.short_names(verdicts) == ["node-a,node-b", "node-b", "node-b:mlx5_3"]


def test_broadcast_is_reported_without_a_verdict() -> None:
    verdict = only(nccl_check.analyze(single_node("broadcast_perf", BROADCAST_ROWS)))
    assert (verdict.test, verdict.busbw, verdict.status, verdict.floor) == (
        "broadcast_perf",
        363.27,
        "REPORT",
        None,
    )


def test_wrong_elements_fail_a_run_above_its_floor() -> None:
    verdict = only(nccl_check.analyze(single_node("all_gather_perf", ALL_GATHER_WRONG_ROWS)))
    assert (verdict.test, verdict.busbw, verdict.floor) == ("all_gather_perf", 370.96, 330.0)
    assert (verdict.status, verdict.note) == ("FAIL", "3 wrong elements")


@pytest.mark.parametrize("text", ["", "mpirun: command not found\n", CRASHED])
def test_output_without_result_rows_is_a_clear_error(text: str) -> None:
    with pytest.raises(nccl_check.ParseError, match="no nccl-tests result rows"):
        nccl_check.analyze(text)


def test_rows_without_the_tests_name_or_below_1_gib_are_errors() -> None:
    unnamed = read("all_reduce_two_nodes.log").replace("# nccl_check: test=all_reduce_perf\n", "")
    with pytest.raises(nccl_check.ParseError, match="without the test's name"):
        nccl_check.analyze(unnamed)
    small = single_node("all_reduce_perf", BROADCAST_ROWS.replace("  1073741824", "   536870912"))
    small = small.replace("  2147483648", "   268435456").replace("  4294967296", "   134217728")
    with pytest.raises(nccl_check.ParseError, match=r"no rows at >= 1 GiB"):
        nccl_check.analyze(small)


# ---------------------------------------------------------------- command lines


def test_nic_names_come_from_nccl_ib_hca_when_it_lists_one_per_gpu() -> None:
    assert nccl_check.nic_names(DGX_HCA, 8)[1] == "mlx5_3"
    assert nccl_check.nic_names("mlx5_0:1,mlx5_1:1", 2) == ["mlx5_0", "mlx5_1"]
    default = [f"mlx5_{k}" for k in range(8)]
    assert nccl_check.nic_names(None, 8) == default
    assert nccl_check.nic_names("^mlx5_1", 8) == default
    assert nccl_check.nic_names("mlx5", 8) == default


@pytest.fixture
def cluster_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shell of a cluster user: interface, NICs and the NCCL library path set, nothing else NCCL."""
    for name in [name for name in os.environ if name.startswith("NCCL_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth0")
    monkeypatch.setenv("NCCL_IB_HCA", DGX_HCA)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/lib/nccl")


def test_dry_run_prints_mpirun_lines_forwarding_the_nccl_environment(
    cluster_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert nccl_check.main(["--nodes", "node-a,node-b", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 4 + 4 + 8  # single-node per host, cross-node, per-NIC pairs
    forward = "-x LD_LIBRARY_PATH -x NCCL_IB_HCA -x NCCL_SOCKET_IFNAME"
    assert lines[0] == f"mpirun -np 8 -H node-a:8 {forward} /opt/nccl-tests/build/all_reduce_perf {BENCH}"
    assert lines[7] == f"mpirun -np 8 -H node-b:8 {forward} /opt/nccl-tests/build/broadcast_perf {BENCH}"
    assert lines[8] == (
        f"mpirun -np 16 -H node-a:8,node-b:8 {forward} -x NCCL_ALGO=RING -x NCCL_DEBUG=INFO"
        f" /opt/nccl-tests/build/all_reduce_perf {BENCH}"
    )
    # NIC k of NCCL_IB_HCA's list, exact match, with GPU k on each side; the shell's list is not forwarded
    assert lines[13] == (
        "mpirun -np 2 -H node-a:1,node-b:1 -x LD_LIBRARY_PATH -x NCCL_SOCKET_IFNAME -x NCCL_ALGO=RING"
        " -x NCCL_DEBUG=INFO -x NCCL_IB_HCA==mlx5_3 -x NCCL_TESTS_DEVICE=1"
        f" /opt/nccl-tests/build/all_reduce_perf {BENCH}"
    )


def test_dry_run_prints_srun_lines(
    cluster_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NCCL_IB_HCA")  # four GPUs and no list: the default NICs mlx5_0 .. mlx5_3
    argv = "--slurm --nodes node-a,node-b --gpus-per-node 4 --nccl-tests-dir /opt/nt --dry-run".split()
    assert nccl_check.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 4 + 4 + 4
    run_on = "srun --nodes 1 --ntasks-per-node 4 --nodelist node-a --export=ALL"
    assert lines[0] == f"{run_on} /opt/nt/all_reduce_perf {BENCH}"
    assert lines[8] == (
        "srun --nodes 2 --ntasks-per-node 4 --nodelist node-a,node-b"
        f" --export=ALL,NCCL_ALGO=RING,NCCL_DEBUG=INFO /opt/nt/all_reduce_perf {BENCH}"
    )
    assert lines[15] == (
        "srun --nodes 2 --ntasks-per-node 1 --nodelist node-a,node-b"
        " --export=ALL,NCCL_ALGO=RING,NCCL_DEBUG=INFO,NCCL_IB_HCA==mlx5_3,NCCL_TESTS_DEVICE=3"
        f" /opt/nt/all_reduce_perf {BENCH}"
    )


def test_one_node_runs_only_single_node_tests(cluster_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert nccl_check.main(["--nodes", "node-a", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-9].rsplit("/", 1)[1] for line in lines] == list(nccl_check.TESTS)


# ---------------------------------------------------------------- running and exit codes


def test_a_run_records_markers_and_fails_a_launch_without_rows() -> None:
    jobs = nccl_check.build_jobs(["node-a", "node-b"], 8, nccl_check.nic_names(None, 8))
    picked = [jobs[0], jobs[4], next(job for job in jobs if job.nic == "mlx5_3")]
    argvs = [nccl_check.job_argv(job, "mpirun", Path("/opt/nt"), {}) for job in picked]
    outputs = {
        "node-a:8": (0, read("all_reduce_node_pass.log")),
        "node-b:8": (1, "ORTE was unable to reliably start one or more daemons.\n"),
        "node-a:1,node-b:1": (0, "\n".join(nccl_check.split_runs(read("per_nic.log"))[3])),
    }

    log = nccl_check.run_jobs(picked, argvs, lambda argv: outputs[argv[argv.index("-H") + 1]])
    assert "# nccl_check: test=all_reduce_perf scope=single-node hosts=node-b exit=1\n" in log
    assert "# nccl_check: test=all_reduce_perf scope=per-NIC hosts=node-a,node-b nic=mlx5_3 exit=0\n" in log
    assert "# command: mpirun -np 8 -H node-a:8 /opt/nt/all_reduce_perf" in log
    verdicts = nccl_check.analyze(log)
    assert [(v.subject, v.busbw, v.status) for v in verdicts] == [
        ("node-a", 481.12, "PASS"),
        ("node-b", None, "FAIL"),
        ("node-b:mlx5_3", 25.04, "FAIL"),
    ]
    assert verdicts[1].note == "launcher exit status 1; no result rows (see the log)"


def test_main_runs_writes_the_log_and_exits_0_when_all_pass(
    cluster_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(nccl_check, "run_command", lambda argv: (0, read("all_reduce_node_pass.log")))
    log = tmp_path / "check.log"
    assert nccl_check.main(["--nodes", "node-a", "--log", str(log)]) == 0
    assert log.read_text().count("# nccl_check: ") == 4
    table = capsys.readouterr().out
    assert "broadcast_perf" in table and "REPORT" in table
    assert table.endswith("every judged run passes\n")
    assert nccl_check.main(["--from-log", str(log)]) == 0


def test_from_log_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert nccl_check.main(["--from-log", str(ASSETS / "all_reduce_cross_ring_pass.log")]) == 0
    assert nccl_check.main(["--from-log", str(ASSETS / "per_nic.log"), "--json"]) == 1
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{") :])
    assert report["short"] == ["node-b:mlx5_3"]
    assert [r["busbw"] for r in report["results"] if r["status"] == "FAIL"] == [25.04]
    crashed = tmp_path / "crashed.log"
    crashed.write_text(CRASHED)
    assert nccl_check.main(["--from-log", str(crashed)]) == 2
    assert "no nccl-tests result rows" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--nodes", "node-a,node-a"],
        ["--nodes", "node-a", "--gpus-per-node", "0"],
        ["--slurm"],
        ["--from-log", "x.log", "--nodes", "node-a"],
        ["--nodes", "node-a", "--bogus"],
    ],
)
def test_usage_errors_exit_2(cluster_env: None, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        nccl_check.main(argv)
    assert exit_info.value.code == 2
