"""Check NCCL bus bandwidth with nccl-tests against the cluster's floors, and name the node or NIC that
falls short.

    # on the nodes, through OpenMPI (the first node is the reference of the per-NIC pairs)
    .venv/bin/python tools/nccl_check.py --nodes node-a,node-b [--gpus-per-node 8] \
        [--nccl-tests-dir /opt/nccl-tests/build] [--log nccl_check.log] [--json] [--dry-run]
    # inside a Slurm allocation (hosts from SLURM_JOB_NODELIST unless --nodes names them)
    .venv/bin/python tools/nccl_check.py --slurm [--dry-run]
    # judge recorded output: a --log of an earlier check, or nccl-tests stdout from elsewhere
    .venv/bin/python tools/nccl_check.py --from-log nccl_check.log [--json]

Runs, each `-b 1G -e 8G -f 2 -g 1` with one process per GPU (nccl-tests built with MPI=1 against the
NCCL torch loads, docs/design.md 5); NCCL_* variables and LD_LIBRARY_PATH of this shell go with them:
- single-node: all_reduce, all_gather, reduce_scatter and broadcast on each node alone (NVLink).
- cross-node: the same four over all nodes with NCCL_ALGO=RING (what the floor describes) and
  NCCL_DEBUG=INFO (the log then records which NICs each node used).
- per-NIC: all_reduce between one GPU on the reference node and one on each other node, once per NIC
  k, with NCCL_IB_HCA==<NIC k> (`=`: exact name; plain mlx5_1 would also take mlx5_10) and
  NCCL_TESTS_DEVICE=k (nccl-tests' first CUDA device: GPU k, the one next to NIC k). With two ranks
  the all-reduce busbw is the link's bandwidth. The NICs are NCCL_IB_HCA's list when it names one
  per GPU, in GPU order (`nvidia-smi topo -m`), else mlx5_0 .. mlx5_<G-1>. A short pair is named by
  the other node's NIC (node-b:mlx5_3, its peer node-a:mlx5_3 in the note): one pair cannot tell
  which end is slow; with 3+ nodes, a NIC short against every node points at the reference node.

Measure: the largest out-of-place busbw at sizes >= 1 GiB (the plateau the floors describe). The
in-place busbw is parsed and shown in --json but not judged, so the two columns never mix.
Floors (docs/design.md 5; busbw GB/s, 8 x H100 per node, 8 x NDR 400G NICs per node):
  single-node all_reduce 430 (expected ~480), all_gather and reduce_scatter 330 (~370);
  cross-node all_reduce 330 (~370-385); per-NIC all_reduce 40 (~46-48).
broadcast, and cross-node all_gather / reduce_scatter, are REPORTed without a verdict: no documented
figure. A run with wrong elements (#wrong), a launcher exit status other than 0, or no result rows
FAILs whatever its bandwidth.
NOTE: 480 GB/s needs NVLink SHARP (NVLS), above what a ring can reach over a GPU's 450 GB/s of
NVLink; do not export SGLang's NCCL_NVLS_ENABLE=0 into this check.

Recorded output: each run of this tool is preceded in the log by `# nccl_check: test=... scope=...
hosts=... [nic=...] exit=N`. In logs from elsewhere, runs are told apart by nccl-tests' own headers;
hosts come from its `#  Rank N ... on HOST` lines and NICs from NCCL_DEBUG=INFO lines (`NET/IB :
Using [0]mlx5_0:1/IB ...`, `Channel 00/0 : 7[7] -> 8[0] [send] via NET/IB/0`). nccl-tests before
2.16 does not print the test's name: put `# nccl_check: test=all_reduce_perf` above such output.
OpenMPI as root in a container needs OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;
srun uses the cluster's MPI plugin (SLURM_MPI_TYPE=pmix where it is not the default).

Exit status: 0 every judged run passes, 1 any FAIL, 2 usage error or a log with no result rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from subprocess import PIPE, STDOUT

TESTS = ("all_reduce_perf", "all_gather_perf", "reduce_scatter_perf", "broadcast_perf")
BENCH_ARGS = ("-b", "1G", "-e", "8G", "-f", "2", "-g", "1")
CROSS_ENV = {"NCCL_ALGO": "RING", "NCCL_DEBUG": "INFO"}
GIB = 2**30
JOB_TIMEOUT_S = 900  # NOTE: a bootstrap failure (wrong NCCL_SOCKET_IFNAME) hangs rather than fails

# (test, scope) -> (expected busbw in GB/s, as docs/design.md 5 gives it; floor to pass)
THRESHOLDS: dict[tuple[str, str], tuple[str, float]] = {
    ("all_reduce_perf", "single-node"): ("480", 430.0),
    ("all_gather_perf", "single-node"): ("370", 330.0),
    ("reduce_scatter_perf", "single-node"): ("370", 330.0),
    ("all_reduce_perf", "cross-node"): ("370-385", 330.0),
    ("all_reduce_perf", "per-NIC"): ("46-48", 40.0),
}

MARKER_RE = re.compile(r"^# nccl_check: (.*)$")
START_RE = re.compile(r"^# (nccl-tests version|Collective test starting|nThread )")
COLLECTIVE_RE = re.compile(r"^# Collective test starting: (\S+)")
RANK_RE = re.compile(r"^#\s+Rank\s+(\d+)\s.*?\son\s+(\S+)\s+device\s+\d+")
AVG_RE = re.compile(r"^# Avg bus bandwidth\s*:\s*(\S+)")
INFO_RE = re.compile(r"^([^\s:]+):\d+:\d+ \[\d+\] NCCL INFO (.*)$")
NET_USING_RE = re.compile(r"^NET/\w+ : Using(.*)")
NET_DEVICE_RE = re.compile(r"\[(\d+)\]([^\s:\[\]]+):\d+")
NET_CHANNEL_RE = re.compile(
    r"^Channel \d+/\d+ : \d+\[\d+\] -> \d+\[\d+\] \[(?:send|receive)\] via NET/\w+/(\d+)"
)
DEFAULT_HEADER = "size count type redop root time algbw busbw #wrong time algbw busbw #wrong".split()


class ParseError(ValueError):
    """Recorded output that cannot be judged."""


@dataclass(frozen=True, slots=True)
class Row:
    """One message size of an nccl-tests table."""

    size: int
    busbw_out_of_place: float
    busbw_in_place: float
    wrong: int
    """Wrong elements, out-of-place plus in-place (`N/A`, not checked, counts 0)."""


@dataclass(slots=True)
class Run:
    """One nccl-tests invocation read from a log."""

    marker: dict[str, str] = field(default_factory=dict)
    test: str | None = None
    rank_hosts: list[str] = field(default_factory=list)
    """Host of each rank, in rank order."""
    net_devices: dict[str, dict[int, str]] = field(default_factory=dict)
    """Host -> NCCL's net device index -> NIC name (the `NET/IB : Using` line)."""
    net_used: dict[str, set[int]] = field(default_factory=dict)
    """Host -> net device indices its channels went through."""
    rows: list[Row] = field(default_factory=list)
    avg_busbw: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """One run judged against its floor."""

    test: str
    scope: str
    subject: str
    """What the verdict is about: a host, hosts joined by ',', or host:NIC."""
    status: str
    """PASS, FAIL, or REPORT (no floor for this test and scope)."""
    busbw: float | None = None
    busbw_in_place: float | None = None
    expected: str | None = None
    floor: float | None = None
    nics: dict[str, list[str]] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True, slots=True)
class Job:
    """One nccl-tests launch."""

    test: str
    scope: str
    hosts: tuple[str, ...]
    procs_per_host: int
    env: dict[str, str]
    nic: str | None = None


# ---------------------------------------------------------------- parsing recorded output


def split_runs(text: str) -> list[list[str]]:
    """Lines per nccl-tests run: a marker always starts one, nccl-tests' header once rows were seen."""
    sections: list[list[str]] = [[]]
    seen_rows = False
    for line in text.splitlines():
        starts = MARKER_RE.match(line) or (seen_rows and START_RE.match(line))
        if starts and sections[-1]:
            sections.append([])
            seen_rows = False
        sections[-1].append(line)
        seen_rows = seen_rows or parse_row(line.split(), DEFAULT_HEADER) is not None
    return sections


def parse_row(tokens: list[str], header: list[str]) -> Row | None:
    """A table row under `header`'s columns (out-of-place busbw first), or None for any other line."""
    busbw = [i for i, name in enumerate(header) if name == "busbw"]
    if len(busbw) < 2 or len(tokens) <= busbw[1] + 1 or not (tokens[0].isdigit() and tokens[1].isdigit()):
        return None
    try:
        return Row(
            size=int(tokens[header.index("size")]),
            busbw_out_of_place=float(tokens[busbw[0]]),
            busbw_in_place=float(tokens[busbw[1]]),
            wrong=sum(int(float(tokens[i + 1])) for i in busbw if tokens[i + 1] != "N/A"),
        )
    except ValueError:
        return None


def parse_header(line: str) -> list[str] | None:
    """Column names of the table header `#  size  count  type ... busbw #wrong ...`."""
    tokens = line.lstrip("#").split()
    return tokens if tokens[:1] == ["size"] and "busbw" in tokens else None


def parse_nccl_info(run: Run, host: str, message: str) -> None:
    """Record a host's net devices (`NET/IB : Using [0]mlx5_0:1/IB ...`) and those its channels use."""
    if using := NET_USING_RE.match(message):
        devices = NET_DEVICE_RE.findall(using.group(1).split(";")[0])
        run.net_devices[host] = {int(index): name for index, name in devices}
    elif channel := NET_CHANNEL_RE.match(message):
        run.net_used.setdefault(host, set()).add(int(channel.group(1)))


def parse_run(lines: list[str]) -> Run:
    run = Run()
    header = DEFAULT_HEADER
    for line in lines:
        if marker := MARKER_RE.match(line):
            run.marker = dict(item.split("=", 1) for item in marker.group(1).split() if "=" in item)
        elif collective := COLLECTIVE_RE.match(line):
            run.test = collective.group(1)
        elif rank := RANK_RE.match(line):
            run.rank_hosts.append(rank.group(2))
        elif avg := AVG_RE.match(line):
            run.avg_busbw = float(avg.group(1))
        elif info := INFO_RE.match(line):
            parse_nccl_info(run, info.group(1), info.group(2))
        elif line.startswith("#"):
            header = parse_header(line) or header
        elif row := parse_row(line.split(), header):
            run.rows.append(row)
    run.test = run.marker.get("test", run.test)
    return run


def host_nics(run: Run, host: str) -> list[str]:
    """NICs a host's channels used, else every NIC NCCL listed for it."""
    devices = run.net_devices.get(host, {})
    used = run.net_used.get(host) or devices.keys()
    return [devices.get(index, f"net device {index}") for index in sorted(used)]


def locate(run: Run) -> tuple[str, list[str]]:
    """Scope and hosts: from the marker, else from the rank lines (one host: single-node; two hosts
    with one rank each: per-NIC; otherwise cross-node)."""
    hosts = list(dict.fromkeys(run.rank_hosts))
    if "hosts" in run.marker:
        hosts = run.marker["hosts"].split(",")
    if not hosts:
        raise ParseError("a run without '#  Rank N ... on HOST' lines: cannot tell where it ran")
    if "scope" in run.marker:
        return run.marker["scope"], hosts
    if len(hosts) == 1:
        return "single-node", hosts
    return ("per-NIC" if len(hosts) == 2 == len(run.rank_hosts) else "cross-node"), hosts


def nic_of(run: Run, host: str) -> str:
    nics = host_nics(run, host)
    return run.marker.get("nic") or (nics[0] if len(nics) == 1 else "?")


def subject_of(run: Run, scope: str, hosts: list[str]) -> tuple[str, str]:
    """What a verdict names, and a note on the peer of a per-NIC pair."""
    if scope == "per-NIC":
        return f"{hosts[-1]}:{nic_of(run, hosts[-1])}", f"peer {hosts[0]}:{nic_of(run, hosts[0])}"
    return ",".join(hosts), ""


def failure_notes(run: Run) -> list[str]:
    """What fails a run whatever its bandwidth."""
    notes = []
    if run.marker.get("exit", "0") != "0":
        notes.append(f"launcher exit status {run.marker['exit']}")
    if wrong := sum(row.wrong for row in run.rows):
        notes.append(f"{wrong} wrong elements")
    if not run.rows:
        notes.append("no result rows (see the log)")
    return notes


def judge(run: Run) -> Verdict:
    scope, hosts = locate(run)
    subject, peer = subject_of(run, scope, hosts)
    if run.rows and run.test is None:
        raise ParseError(f"rows from {subject} without the test's name: add '# nccl_check: test=...'")
    test = run.test or "?"
    expected, floor = THRESHOLDS.get((test, scope), (None, None))
    notes = [peer] if peer else []
    failures = failure_notes(run)
    large = [row for row in run.rows if row.size >= GIB]
    if run.rows and not large:
        raise ParseError(f"{test} on {subject}: no rows at >= 1 GiB (run with -b 1G -e 8G)")
    if run.rows and run.avg_busbw is None:
        notes.append("no 'Avg bus bandwidth' line: the output may be cut short")
    busbw = max((row.busbw_out_of_place for row in large), default=None)
    if failures:
        status = "FAIL"
    elif floor is None or busbw is None:
        status = "REPORT"
    else:
        status = "PASS" if busbw >= floor else "FAIL"
    return Verdict(
        test=test,
        scope=scope,
        subject=subject,
        status=status,
        busbw=busbw,
        busbw_in_place=max((row.busbw_in_place for row in large), default=None),
        expected=expected,
        floor=floor,
        nics={host: host_nics(run, host) for host in hosts if host_nics(run, host)},
        note="; ".join(notes + failures),
    )


def analyze(text: str) -> list[Verdict]:
    """Verdicts for every run in recorded output; stretches that are no run (launcher chatter) are
    skipped."""
    runs = [parse_run(lines) for lines in split_runs(text)]
    if not any(run.rows or run.marker for run in runs):
        raise ParseError(
            "no nccl-tests result rows (lines like '  1073741824  268435456  float  sum  -1  ...  busbw ...')"
        )
    return [judge(run) for run in runs if run.rows or run.marker or run.rank_hosts]


# ---------------------------------------------------------------- report


def short_names(verdicts: list[Verdict]) -> list[str]:
    return list(dict.fromkeys(v.subject for v in verdicts if v.status == "FAIL"))


def format_number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}" if value.is_integer() else f"{value:.2f}"


def table_line(v: Verdict) -> str:
    busbw, expected, floor = format_number(v.busbw), v.expected or "-", format_number(v.floor)
    line = f"{v.test:<20} {v.scope:<12} {v.subject:<28} {busbw:>8} {expected:>9} {floor:>8}  {v.status}"
    return line + (f"  ({v.note})" if v.note else "")


def failure_line(v: Verdict) -> str:
    short = f" busbw {format_number(v.busbw)} GB/s < {format_number(v.floor)}" if v.busbw is not None else ""
    return f"FAIL {v.subject}: {v.test} {v.scope}{short}" + (f" ({v.note})" if v.note else "")


def format_table(verdicts: list[Verdict]) -> str:
    header = f"{'test':<20} {'scope':<12} {'subject':<28} {'busbw':>8} {'expected':>9} {'pass >=':>8}  result"
    lines = [header, *map(table_line, verdicts)]
    lines += [failure_line(v) for v in verdicts if v.status == "FAIL"]
    names = short_names(verdicts)
    lines.append(f"short: {', '.join(names)}" if names else "every judged run passes")
    return "\n".join(lines)


def format_json(verdicts: list[Verdict]) -> str:
    return json.dumps({"results": [asdict(v) for v in verdicts], "short": short_names(verdicts)}, indent=2)


# ---------------------------------------------------------------- running


def nic_names(hca: str | None, gpus_per_node: int) -> list[str]:
    """NICs in GPU order: NCCL_IB_HCA's names when it lists one per GPU (not an `^` exclusion)."""
    names = [entry.split(":")[0] for entry in (hca or "").lstrip("=").split(",") if entry]
    if hca and not hca.startswith("^") and len(names) == gpus_per_node:
        return names
    return [f"mlx5_{k}" for k in range(gpus_per_node)]


def build_jobs(hosts: list[str], gpus_per_node: int, nics: list[str]) -> list[Job]:
    jobs = [Job(test, "single-node", (host,), gpus_per_node, {}) for host in hosts for test in TESTS]
    if len(hosts) < 2:
        return jobs
    jobs += [Job(test, "cross-node", tuple(hosts), gpus_per_node, dict(CROSS_ENV)) for test in TESTS]
    for host in hosts[1:]:
        for k, nic in enumerate(nics):
            env = {**CROSS_ENV, "NCCL_IB_HCA": f"={nic}", "NCCL_TESTS_DEVICE": str(k)}
            jobs.append(Job("all_reduce_perf", "per-NIC", (hosts[0], host), 1, env, nic))
    return jobs


def forwarded_names(environ: Mapping[str, str]) -> list[str]:
    """Variables of this shell that mpirun passes on (OpenMPI passes none by itself)."""
    return sorted(name for name in environ if name.startswith("NCCL_") or name == "LD_LIBRARY_PATH")


def mpirun_argv(job: Job, binary: str, environ: Mapping[str, str]) -> list[str]:
    env_args = [arg for name in forwarded_names(environ) if name not in job.env for arg in ("-x", name)]
    env_args += [arg for name, value in job.env.items() for arg in ("-x", f"{name}={value}")]
    hosts = ",".join(f"{host}:{job.procs_per_host}" for host in job.hosts)
    procs = str(len(job.hosts) * job.procs_per_host)
    return ["mpirun", "-np", procs, "-H", hosts, *env_args, binary, *BENCH_ARGS]


def srun_argv(job: Job, binary: str) -> list[str]:
    """srun passes this shell's environment on by itself (ALL); the job's variables are added."""
    export = ",".join(["ALL", *(f"{name}={value}" for name, value in job.env.items())])
    return [
        "srun",
        "--nodes",
        str(len(job.hosts)),
        "--ntasks-per-node",
        str(job.procs_per_host),
        "--nodelist",
        ",".join(job.hosts),
        f"--export={export}",
        binary,
        *BENCH_ARGS,
    ]


def job_argv(job: Job, launcher: str, tests_dir: Path, environ: Mapping[str, str]) -> list[str]:
    binary = str(tests_dir / job.test)
    return srun_argv(job, binary) if launcher == "srun" else mpirun_argv(job, binary, environ)


def marker_line(job: Job, exit_status: int) -> str:
    nic = f" nic={job.nic}" if job.nic else ""
    hosts = ",".join(job.hosts)
    return f"# nccl_check: test={job.test} scope={job.scope} hosts={hosts}{nic} exit={exit_status}"


def run_command(argv: list[str]) -> tuple[int, str]:
    """Exit status and stdout+stderr of one launch."""
    try:
        done = subprocess.run(argv, stdout=PIPE, stderr=STDOUT, text=True, timeout=JOB_TIMEOUT_S)
    except FileNotFoundError as error:
        return 127, str(error)
    except subprocess.TimeoutExpired as error:
        partial = error.stdout or b""  # NOTE: the output read so far comes as bytes, even with text=True
        output = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
        return 124, f"{output}\n# timed out after {JOB_TIMEOUT_S} s"
    return done.returncode, done.stdout


def run_jobs(jobs: list[Job], argvs: list[list[str]], run: Callable[[list[str]], tuple[int, str]]) -> str:
    """The log of every launch, each behind its marker line and command line."""
    parts = []
    for index, (job, argv) in enumerate(zip(jobs, argvs, strict=True), start=1):
        what = " ".join([job.test, job.scope, ",".join(job.hosts), job.nic or ""])
        print(f"[{index}/{len(jobs)}] {what}", file=sys.stderr)
        exit_status, output = run(argv)
        parts.append(f"{marker_line(job, exit_status)}\n# command: {shlex.join(argv)}\n{output}")
    return "\n".join(parts)


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", help="comma-separated hosts; the first is the per-NIC reference")
    parser.add_argument("--slurm", action="store_true", help="launch with srun instead of mpirun")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--nccl-tests-dir", type=Path, default=Path("/opt/nccl-tests/build"))
    parser.add_argument("--log", type=Path, default=Path("nccl_check.log"), help="a run's recorded output")
    parser.add_argument("--from-log", type=Path, help="judge recorded output instead of running")
    parser.add_argument("--dry-run", action="store_true", help="print the command lines, run nothing")
    parser.add_argument("--json", action="store_true")
    return parser


def resolve_hosts(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    if args.nodes:
        hosts = [host for host in args.nodes.split(",") if host]
    elif nodelist := os.environ.get("SLURM_JOB_NODELIST"):
        scontrol = ["scontrol", "show", "hostnames", nodelist]
        hosts = subprocess.run(scontrol, capture_output=True, text=True, check=True).stdout.split()
    else:
        parser.error("--slurm needs --nodes or a Slurm allocation (SLURM_JOB_NODELIST)")
    if not hosts or len(set(hosts)) != len(hosts):
        parser.error(f"--nodes needs distinct hosts, got {args.nodes!r}")
    return hosts


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.from_log and (args.nodes or args.slurm or args.dry_run):
        parser.error("--from-log judges a log: it takes no --nodes, --slurm or --dry-run")
    if not args.from_log and not (args.nodes or args.slurm):
        parser.error("give --nodes host1,host2 or --slurm (or --from-log FILE)")
    if args.gpus_per_node < 1:
        parser.error("--gpus-per-node must be at least 1")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    if args.from_log:
        text = args.from_log.read_text(errors="replace")
    else:
        hosts = resolve_hosts(args, parser)
        nics = nic_names(os.environ.get("NCCL_IB_HCA"), args.gpus_per_node)
        jobs = build_jobs(hosts, args.gpus_per_node, nics)
        launcher = "srun" if args.slurm else "mpirun"
        argvs = [job_argv(job, launcher, args.nccl_tests_dir, os.environ) for job in jobs]
        if args.dry_run:
            print("\n".join(shlex.join(argv) for argv in argvs))
            return 0
        text = run_jobs(jobs, argvs, run_command)
        args.log.write_text(text)
        print(f"output recorded in {args.log}", file=sys.stderr)
    try:
        verdicts = analyze(text)
    except ParseError as error:
        print(f"nccl_check: error: {args.from_log or args.log}: {error}", file=sys.stderr)
        return 2
    print(format_json(verdicts) if args.json else format_table(verdicts))
    return 1 if short_names(verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
