# megatron-s2l images (docs/deploy.md, "The image"). Two targets:
#
#   gpu (the default, last stage): CUDA 13, Python 3.11, the GPU lock docker/gpu.lock, transformer-engine
#     built from source for sm_90 (H100), nccl-tests built with MPI against the NCCL that torch loads,
#     the project; `s2l` is the entrypoint.
#       docker build -t megatron-s2l:0.1.0 .
#       docker run --gpus all --rm megatron-s2l:0.1.0 --help
#
#   cpu: Debian bookworm's Python 3.11 and the CPU development set exactly as `make setup` installs it;
#     runs `make demo`. PyPI's torch is the CUDA build, so the CPU wheel of torch 2.13.0 comes in
#     through the `wheels` build context (a folder holding torch-2.13.0+cpu-cp311-*.whl):
#       docker build --target cpu --build-context wheels=/opt/wheels -t megatron-s2l:cpu .
#       docker run --rm --shm-size 2g megatron-s2l:cpu
#       docker run --rm megatron-s2l:cpu s2l --help      # the venv's bin is on PATH in both targets
#
# Pins: every Python package of the GPU image comes from docker/gpu.lock (resolved from pyproject.toml);
# the *_VERSION arguments below repeat the main ones for the labels and a build-time check, and
# tests/unit/test_docker.py checks that they equal the lock.

ARG BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04
ARG CPU_BASE_IMAGE=debian:bookworm-slim

# --------------------------------------------------------------------------------------------------
# GPU: the system layer (Python 3.11 from the deadsnakes PPA: Ubuntu 24.04's own is 3.12; OpenMPI for
# nccl-tests; git for the sources built below).
FROM ${BASE_IMAGE} AS gpu-base
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# NOTE: system packages follow the base image's release (its tag is the pin); Python packages are locked.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gnupg software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential git libopenmpi-dev openmpi-bin \
        python3.11 python3.11-dev python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# GPU: the locked Python dependencies, with pip's resolver (no --no-deps): -r installs every pin and
# -c keeps anything else out of the lock's versions.
FROM gpu-base AS gpu-deps
ARG PIP_VERSION=26.3
COPY docker/gpu.lock /opt/gpu.lock
RUN pip install "pip==${PIP_VERSION}" \
    && pip install -r /opt/gpu.lock -c /opt/gpu.lock \
    && pip check

# GPU: transformer-engine from source (PyPI has no wheel of its PyTorch extension for this torch).
# 2.11 is the newest release inside megatron-core 0.16.1's declared range (>=2.9.0a0,<2.12.0) and
# builds for CUDA 13 (it has a core_cu13 variant). --no-build-isolation: it compiles against the torch installed above;
# its build requirements (cmake, pybind11; ninja is in the lock) are pinned here, in this stage only.
FROM gpu-deps AS transformer-engine
ARG TE_VERSION=2.11.0
ARG TE_GIT_REF=v2.11
ARG TE_COMMIT=c188b533cc3721ca9c6bbfd26148f5cf60108c25
ARG MAX_JOBS=16
ENV NVTE_FRAMEWORK=pytorch \
    NVTE_CUDA_ARCHS=90 \
    MAX_JOBS=${MAX_JOBS}
RUN pip install -c /opt/gpu.lock cmake==3.31.6 pybind11==2.13.6 wheel==0.48.0 \
    && git clone --depth 1 --branch "${TE_GIT_REF}" --recurse-submodules --shallow-submodules \
        https://github.com/NVIDIA/TransformerEngine.git /src/transformer-engine \
    && test "$(git -C /src/transformer-engine rev-parse HEAD)" = "${TE_COMMIT}" \
    && pip wheel --no-build-isolation --no-deps -w /wheels /src/transformer-engine \
    && ls /wheels/transformer_engine-"${TE_VERSION}"*.whl

# GPU: nccl-tests with MPI, linked against the NCCL of the nvidia-nccl-cu13 wheel (the library torch
# loads), for sm_90. The wheel ships only libnccl.so.2: the link step needs a libnccl.so beside it.
FROM gpu-deps AS nccl-tests
ARG NCCL_TESTS_VERSION=2.19.6
RUN NCCL_HOME="$(python -c 'import nvidia.nccl as m; print(list(m.__path__)[0])')" \
    && ln -sf libnccl.so.2 "${NCCL_HOME}/lib/libnccl.so" \
    && git clone --depth 1 --branch "v${NCCL_TESTS_VERSION}" https://github.com/NVIDIA/nccl-tests.git /src/nccl-tests \
    && make -C /src/nccl-tests -j "$(nproc)" MPI=1 MPI_HOME=/usr/lib/x86_64-linux-gnu/openmpi \
        CUDA_HOME=/usr/local/cuda NCCL_HOME="${NCCL_HOME}" \
        NVCC_GENCODE="-gencode=arch=compute_90,code=sm_90" BUILDDIR=/opt/nccl-tests \
    && /opt/nccl-tests/all_reduce_perf --help > /dev/null

# --------------------------------------------------------------------------------------------------
# CPU: the development set, installed by the Makefile itself (CPU torch wheel first, SGLang --no-deps).
FROM ${CPU_BASE_IMAGE} AS cpu
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="megatron-s2l (CPU demo)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.description="S2L-PO GRPO trainer: the CPU development set, runs make demo"
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates g++ gcc make python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*
# `wheels` is a named build context (--build-context wheels=DIR), not a stage.
# hadolint ignore=DL3022
COPY --from=wheels . /opt/wheels/
ENV PIP_FIND_LINKS=/opt/wheels \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/megatron-s2l
COPY . .
RUN python3 --version | grep -q "^Python 3\.11\." && make setup
# `s2l` (and the venv's python) on PATH, as in the GPU image: `podman run megatron-s2l:cpu s2l --help`.
ENV VIRTUAL_ENV=/opt/megatron-s2l/.venv \
    PATH=/opt/megatron-s2l/.venv/bin:${PATH}
CMD ["make", "demo"]

# --------------------------------------------------------------------------------------------------
# GPU: the image. apex is not installed: with transformer-engine present, megatron-core 0.16.1 takes
# its fused Adam, fused layer norms and multi-tensor ops (scale, l2norm) from TE and falls back to
# torch, never needing apex (docs/design.md 5).
FROM gpu-deps AS gpu
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG TORCH_VERSION=2.14.1
ARG TRITON_VERSION=3.8.0
ARG SGLANG_VERSION=0.5.23
ARG SGLANG_ROUTER_VERSION=0.3.2
ARG TRANSFORMERS_VERSION=5.19.0
ARG MEGATRON_CORE_VERSION=0.16.1
ARG NCCL_VERSION=2.30.7
ARG TE_VERSION=2.11.0
ARG NCCL_TESTS_VERSION=2.19.6
LABEL org.opencontainers.image.title="megatron-s2l" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.description="S2L-PO GRPO trainer: megatron-core learner, SGLang rollouts (sm_90)" \
      io.megatron-s2l.torch="${TORCH_VERSION}" \
      io.megatron-s2l.triton="${TRITON_VERSION}" \
      io.megatron-s2l.sglang="${SGLANG_VERSION}" \
      io.megatron-s2l.sglang-router="${SGLANG_ROUTER_VERSION}" \
      io.megatron-s2l.transformers="${TRANSFORMERS_VERSION}" \
      io.megatron-s2l.megatron-core="${MEGATRON_CORE_VERSION}" \
      io.megatron-s2l.nvidia-nccl-cu13="${NCCL_VERSION}" \
      io.megatron-s2l.transformer-engine="${TE_VERSION}" \
      io.megatron-s2l.nccl-tests="${NCCL_TESTS_VERSION}" \
      io.megatron-s2l.cuda-archs="90"
COPY --from=transformer-engine /wheels /tmp/te-wheels
RUN pip install -c /opt/gpu.lock /tmp/te-wheels/*.whl && rm -rf /tmp/te-wheels
COPY --from=nccl-tests /opt/nccl-tests /opt/nccl-tests
WORKDIR /opt/megatron-s2l
COPY . .
RUN pip install --no-build-isolation -c /opt/gpu.lock ".[gpu]" \
    && pip check \
    && python -c "import sys; from importlib.metadata import version; \
want = dict(torch='${TORCH_VERSION}', triton='${TRITON_VERSION}', sglang='${SGLANG_VERSION}', \
    transformers='${TRANSFORMERS_VERSION}', transformer_engine='${TE_VERSION}'); \
want.update({'sglang-router': '${SGLANG_ROUTER_VERSION}', 'megatron-core': '${MEGATRON_CORE_VERSION}', \
    'nvidia-nccl-cu13': '${NCCL_VERSION}'}); \
got = {n: version(n).split('+')[0] for n in want}; sys.exit(0 if got == want else f'{want} != {got}')"
# nccl-tests (and anything else) find the wheel's NCCL; torch loads the same file.
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/nccl/lib:${LD_LIBRARY_PATH} \
    PATH=/opt/nccl-tests:${PATH}
ENTRYPOINT ["s2l"]
CMD ["--help"]
