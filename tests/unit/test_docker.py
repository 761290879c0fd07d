"""The image's dependency files agree: pyproject.toml (the one source of dependencies), docker/gpu.lock
(the GPU set, resolved from it), the Dockerfile (which installs the lock and names its main pins) and
the Makefile (the CPU set's pins). Each check is a function of the files' text that returns its
problems; every test runs it on the real files and on a copy broken on purpose, so that it can fail.

    .venv/bin/pytest tests/unit/test_docker.py -q

NUM_GPUS = 0. No network, no container tool: text only.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

NUM_GPUS = 0
ROOT = Path(__file__).resolve().parents[2]
PROJECT = "megatron-s2l"
# The image's platform: markers in the dependencies are evaluated for it.
TARGET_ENV = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
}
# The Dockerfile's version arguments and the lock entries they must equal.
DOCKER_ARGS = {
    "TORCH_VERSION": "torch",
    "TRITON_VERSION": "triton",
    "SGLANG_VERSION": "sglang",
    "SGLANG_ROUTER_VERSION": "sglang-router",
    "TRANSFORMERS_VERSION": "transformers",
    "MEGATRON_CORE_VERSION": "megatron-core",
    "NCCL_VERSION": "nvidia-nccl-cu13",
}
# megatron-core 0.16.1's own Requires-Dist names transformer-engine[core_cu13,pytorch]>=2.9.0a0,<2.12.0
# (extras dev and lts); the image builds TE from source, so the lock cannot check it.
MCORE_TE_RANGE = ">=2.9.0a0,<2.12.0"
# The CPU and GPU sets run the same SGLang: the Makefile's --no-deps pins equal the lock's.
SAME_IN_BOTH_SETS = ("sglang", "sglang-router", "timm")


def read(name: str) -> str:
    return (ROOT / name).read_text()


# ---------------------------------------------------------------------------------------------------
# Parsers


def parse_lock(text: str) -> tuple[dict[str, str], list[str]]:
    """The lock's `name==version` lines as {canonical name: version}, and its malformed lines."""
    pins: dict[str, str] = {}
    bad = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", line)
        name = canonicalize_name(m.group(1)) if m else ""
        if m is None or name in pins:
            bad.append(line)
            continue
        pins[name] = m.group(2)
    return pins, bad


def gpu_requirements(pyproject_text: str) -> list[Requirement]:
    """The base dependencies plus the `gpu` extra, with the project's own extras it names expanded."""
    project = tomllib.loads(pyproject_text)["project"]
    extras = project.get("optional-dependencies", {})
    reqs: list[Requirement] = [Requirement(s) for s in project["dependencies"]]
    todo, seen = ["gpu"], set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for spec in extras[extra]:
            req = Requirement(spec)
            if canonicalize_name(req.name) == PROJECT:
                todo.extend(req.extras)
            else:
                reqs.append(req)
    return [r for r in reqs if r.marker is None or r.marker.evaluate(TARGET_ENV | {"extra": "gpu"})]


def dockerfile_args(text: str) -> dict[str, list[str]]:
    """Every `ARG NAME=default` of the Dockerfile, by name (an argument may be declared per stage)."""
    out: dict[str, list[str]] = {}
    for name, value in re.findall(r"^ARG\s+([A-Z0-9_]+)=(\S+)\s*$", text, flags=re.M):
        out.setdefault(name, []).append(value)
    return out


def pinned_in_commands(text: str) -> dict[str, str]:
    """`name==version` tokens in a Dockerfile's or Makefile's commands (comments left out)."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    pins = {}
    for name, version in re.findall(r"(?<![\w.-])([A-Za-z][A-Za-z0-9_.-]*)==([0-9][A-Za-z0-9.*+-]*)", body):
        pins[canonicalize_name(name)] = version.rstrip(".")
    return pins


# ---------------------------------------------------------------------------------------------------
# Checks: each returns a list of problems (empty when the files agree)


def check_lock_format(lock_text: str) -> list[str]:
    pins, bad = parse_lock(lock_text)
    problems = [f"malformed or repeated lock line: {line!r}" for line in bad]
    for name in (PROJECT, "transformer-engine"):
        if name in pins:
            problems.append(f"{name} must not be in the lock")
    return problems


def check_lock_covers_pyproject(pyproject_text: str, lock_text: str) -> list[str]:
    """Every base and gpu dependency is pinned in the lock, at a version its specifier allows."""
    pins, _ = parse_lock(lock_text)
    problems = []
    for req in gpu_requirements(pyproject_text):
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is not pinned in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"lock has {name}=={pins[name]}, pyproject.toml asks {req}")
    return problems


def check_dockerfile_matches_lock(dockerfile_text: str, lock_text: str) -> list[str]:
    pins, _ = parse_lock(lock_text)
    args = dockerfile_args(dockerfile_text)
    problems = []
    for arg, values in args.items():
        if len(set(values)) > 1:
            problems.append(f"ARG {arg} has different defaults in different stages: {values}")
    for arg, package in DOCKER_ARGS.items():
        if arg not in args:
            problems.append(f"the Dockerfile declares no ARG {arg} (for {package})")
        elif args[arg][0] != pins.get(package):
            problems.append(f"ARG {arg}={args[arg][0]} but the lock has {package}=={pins.get(package)}")
    for name, version in pinned_in_commands(dockerfile_text).items():
        if name in pins and pins[name] != version:
            problems.append(f"the Dockerfile installs {name}=={version}, the lock has {pins[name]}")
    te = args.get("TE_VERSION", ["missing"])[0]
    ref = args.get("TE_GIT_REF", ["missing"])[0]
    if te == "missing" or Version(te) not in Requirement(f"te{MCORE_TE_RANGE}").specifier:
        problems.append(f"TE_VERSION={te} is outside megatron-core 0.16.1's range {MCORE_TE_RANGE}")
    elif Version(ref.removeprefix("v")).release[:2] != Version(te).release[:2]:
        problems.append(f"TE_GIT_REF={ref} is not the tag of TE_VERSION={te}")
    return problems


def check_dockerfile_parts(dockerfile_text: str) -> list[str]:
    """The image's parts the issue asks for, as text the Dockerfile must contain."""
    required = {
        "a CUDA 13 devel base as a build argument": r"^ARG BASE_IMAGE=\S*:13\.\d+\.\d+-\S*devel\S*$",
        "a gpu and a cpu stage": r"(?s)^FROM .* AS cpu$.*^FROM .* AS gpu$",
        "the lock, constraining itself": r"pip install -r /opt/gpu\.lock -c /opt/gpu\.lock",
        "TE without build isolation": r"pip wheel --no-build-isolation",
        "TE for PyTorch": r"NVTE_FRAMEWORK=pytorch",
        "TE for sm_90": r"NVTE_CUDA_ARCHS=90\b",
        "nccl-tests with MPI": r"\bMPI=1\b",
        "nccl-tests for sm_90": r'NVCC_GENCODE="-gencode=arch=compute_90,code=sm_90"',
        "nccl-tests against the wheel's NCCL": r"ln -sf libnccl\.so\.2 .*libnccl\.so",
        "why no apex": r"apex is not installed",
        "s2l as the entrypoint": r'^ENTRYPOINT \["s2l"\]$',
        "an OCI version label": r'org\.opencontainers\.image\.version="\$\{VERSION\}"',
        "the CPU target runs make demo": r'^CMD \["make", "demo"\]$',
        "Python 3.11": r"python3\.11 -m venv",
    }
    return [what for what, pattern in required.items() if not re.search(pattern, dockerfile_text, flags=re.M)]


def check_makefile_cpu_pins(makefile_text: str, pyproject_text: str, lock_text: str) -> list[str]:
    """The CPU set's pins satisfy pyproject.toml's base and rollout specifiers; SGLang's equal the lock's."""
    project = tomllib.loads(pyproject_text)["project"]
    specs = [Requirement(s) for s in project["dependencies"] + project["optional-dependencies"]["rollout"]]
    by_name = {canonicalize_name(r.name): r for r in specs}
    make_pins = pinned_in_commands(makefile_text)
    lock_pins, _ = parse_lock(lock_text)
    problems = []
    for name in ("torch", "triton"):
        if name not in make_pins:
            problems.append(f"the Makefile pins no {name} for the CPU set")
    for name, version in make_pins.items():
        if name in by_name and not by_name[name].specifier.contains(version, prereleases=True):
            problems.append(f"the Makefile installs {name}=={version}, pyproject.toml asks {by_name[name]}")
    for name in SAME_IN_BOTH_SETS:
        if make_pins.get(name) != lock_pins.get(name):
            problems.append(f"Makefile: {name}=={make_pins.get(name)}, lock: {lock_pins.get(name)}")
    return problems


def dockerfile_stages(text: str) -> dict[str, tuple[str, list[str]]]:
    """{stage name: (the stage it starts FROM, its instructions)}, continuation lines joined."""
    joined = re.sub(
        r"\\\n\s*", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    )
    stages: dict[str, tuple[str, list[str]]] = {}
    current: list[str] = []
    for line in joined.splitlines():
        m = re.match(r"^FROM\s+(\S+)\s+AS\s+(\S+)", line)
        if m:
            current = []
            stages[m.group(2)] = (m.group(1), current)
        elif line.strip():
            current.append(line.strip())
    return stages


def stage_env(text: str, target: str) -> dict[str, str]:
    """The ENV a target stage runs with: its own and its parent stages' `ENV K=V` (later ones win,
    `${K}` expanded), from the base image up (the base image's own PATH is left as `${PATH}`)."""
    stages = dockerfile_stages(text)
    chain, name = [], target
    while name in stages:
        chain.append(name)
        name = stages[name][0]
    env: dict[str, str] = {}
    for stage in reversed(chain):
        for line in stages[stage][1]:
            if line.startswith("ENV "):
                for key, value in re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", line[4:]):
                    env[key] = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), value)
    return env


def s2l_bin_dirs(dockerfile_text: str, makefile_text: str) -> dict[str, str]:
    """Where each target installs `s2l`: the gpu stage's `python3.11 -m venv DIR` (pip installs into
    it), the cpu stage's WORKDIR plus the Makefile's VENV (`make setup`)."""
    stages = dockerfile_stages(dockerfile_text)
    venv = re.search(r"python3\.11 -m venv (\S+)", dockerfile_text)
    workdir = [ln.split()[1] for ln in stages.get("cpu", ("", []))[1] if ln.startswith("WORKDIR ")]
    make_venv = re.search(r"^VENV \?= (\S+)$", makefile_text, flags=re.M)
    return {
        "gpu": f"{venv.group(1)}/bin" if venv else "",
        "cpu": f"{workdir[-1]}/{make_venv.group(1)}/bin" if workdir and make_venv else "",
    }


def check_s2l_on_path(dockerfile_text: str, makefile_text: str) -> list[str]:
    """Both targets put the directory holding `s2l` on PATH (`docker run IMAGE s2l --help`)."""
    problems = []
    for target, bin_dir in s2l_bin_dirs(dockerfile_text, makefile_text).items():
        path = stage_env(dockerfile_text, target).get("PATH", "").split(":")
        if not bin_dir or bin_dir not in path:
            problems.append(f"target {target}: {bin_dir or 's2l'} is not on PATH ({':'.join(path)})")
    return problems


# ---------------------------------------------------------------------------------------------------
# Tests


def test_lock_is_well_formed() -> None:
    lock = read("docker/gpu.lock")
    assert check_lock_format(lock) == []
    assert len(parse_lock(lock)[0]) > 100
    assert check_lock_format(lock + "torch==2.13.0\n")  # repeated
    assert check_lock_format(lock + "flash-attn>=2\n")  # not a pin
    assert check_lock_format(lock + "megatron_s2l==0.1.0\n")  # the project itself


def test_lock_pins_every_base_and_gpu_dependency_within_its_specifier() -> None:
    pyproject, lock = read("pyproject.toml"), read("docker/gpu.lock")
    assert check_lock_covers_pyproject(pyproject, lock) == []
    names = {canonicalize_name(r.name) for r in gpu_requirements(pyproject)}
    assert {"torch", "triton", "sglang", "sglang-router", "megatron-core", "httpx"} <= names
    assert check_lock_covers_pyproject(pyproject, re.sub(r"^httpx==.*$", "", lock, flags=re.M))
    assert check_lock_covers_pyproject(pyproject, lock.replace("\ntorch==2.14.1\n", "\ntorch==2.13.0\n"))
    broken_pyproject = pyproject.replace('"transformers==5.19.0"', '"transformers==5.18.0"')
    assert broken_pyproject != pyproject
    assert check_lock_covers_pyproject(broken_pyproject, lock)


def test_dockerfile_pins_equal_the_lock() -> None:
    dockerfile, lock = read("Dockerfile"), read("docker/gpu.lock")
    assert check_dockerfile_matches_lock(dockerfile, lock) == []
    assert check_dockerfile_matches_lock(
        dockerfile.replace("ARG TRITON_VERSION=3.8.0", "ARG TRITON_VERSION=3.9.0"), lock
    )
    assert check_dockerfile_matches_lock(dockerfile, lock.replace("\nsglang==0.5.23\n", "\nsglang==0.5.22\n"))
    assert check_dockerfile_matches_lock(
        dockerfile.replace("ARG TE_VERSION=2.11.0", "ARG TE_VERSION=2.16.1"), lock
    )
    assert check_dockerfile_matches_lock(
        dockerfile.replace("ARG TE_GIT_REF=v2.11", "ARG TE_GIT_REF=v2.10"), lock
    )
    extra = dockerfile.replace("pybind11==2.13.6", "pybind11==2.13.6 ninja==1.11.1")
    assert extra != dockerfile
    assert check_dockerfile_matches_lock(extra, lock)


def test_dockerfile_has_the_image_parts() -> None:
    dockerfile = read("Dockerfile")
    assert check_dockerfile_parts(dockerfile) == []
    assert check_dockerfile_parts(dockerfile.replace("NVTE_CUDA_ARCHS=90", "NVTE_CUDA_ARCHS=80"))
    assert check_dockerfile_parts(dockerfile.replace('ENTRYPOINT ["s2l"]', 'ENTRYPOINT ["python"]'))


def test_makefile_cpu_pins_satisfy_pyproject() -> None:
    makefile, pyproject, lock = read("Makefile"), read("pyproject.toml"), read("docker/gpu.lock")
    assert check_makefile_cpu_pins(makefile, pyproject, lock) == []
    assert pinned_in_commands(makefile)["torch"] == "2.13.0"
    assert check_makefile_cpu_pins(makefile.replace("torch==2.13.0", "torch==2.12.0"), pyproject, lock)
    assert check_makefile_cpu_pins(makefile.replace("sglang==0.5.23", "sglang==0.5.22"), pyproject, lock)
    assert check_makefile_cpu_pins(
        makefile, pyproject.replace('"triton>=3.6,<3.10"', '"triton>=3.6,<3.9"'), lock
    )


@pytest.mark.parametrize("path", [".venv", ".git", "/cache", "/runs"])
def test_dockerignore_keeps_outputs_out_of_the_context(path: str) -> None:
    assert path in read(".dockerignore").split()


def test_both_targets_put_s2l_on_path() -> None:
    dockerfile, makefile = read("Dockerfile"), read("Makefile")
    assert s2l_bin_dirs(dockerfile, makefile) == {
        "gpu": "/opt/venv/bin",
        "cpu": "/opt/megatron-s2l/.venv/bin",
    }
    assert check_s2l_on_path(dockerfile, makefile) == []
    assert "/opt/nccl-tests" in stage_env(dockerfile, "gpu")["PATH"].split(":")  # the gpu stage's own ENV
    # Broken on purpose: the cpu target without its ENV PATH (what `podman run ... s2l` hit: exit 127),
    # and the gpu image's venv moved without its PATH following.
    no_cpu_path = dockerfile.replace("    PATH=/opt/megatron-s2l/.venv/bin:${PATH}", "    XPATH=1")
    assert no_cpu_path != dockerfile
    assert check_s2l_on_path(no_cpu_path, makefile) == [
        "target cpu: /opt/megatron-s2l/.venv/bin is not on PATH ()"
    ]
    moved = dockerfile.replace("python3.11 -m venv /opt/venv", "python3.11 -m venv /opt/env")
    assert check_s2l_on_path(moved, makefile)
    assert check_s2l_on_path(dockerfile, makefile.replace("VENV ?= .venv", "VENV ?= venv"))
