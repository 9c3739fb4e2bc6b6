# syntax=docker/dockerfile:1
# The semcached daemon, CPU build: torch CPU and all-MiniLM-L6-v2 baked in, so the
# container needs no network at run time. See docs/deploy.md.
#
#   docker build -t semcached:latest .
#   docker run --rm -p 8080:8080 -v semcached-data:/var/lib/semcached semcached:latest
#
# Offline builds: put the semcached wheel and every dependency's wheel in wheelhouse/
# (scripts/image-check does: `pip wheel -w wheelhouse torch==2.13.0 '.[embed]'` with
# HNSWLIB_NO_NATIVE=1) and pass a local base, e.g.
#   podman build --build-arg BASE_IMAGE=localhost/semcached-base:bookworm .
# The base needs python3 (3.11, the version the wheels were built for) with venv; the
# runtime needs libgomp1 (lightgbm) and libstdc++6 (hnswlib), installed with apt when
# the base lacks them.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# The pins scripts/test uses; torch from the CPU index, never a multi-GB CUDA build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The CUDA variant: TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 and
# EXTRAS=embed,gpu,faiss-gpu (docs/deploy.md, "The CUDA image").
ARG EXTRAS=embed
# hnswlib compiles with -march=native unless told not to: an image runs on other CPUs.
ENV HNSWLIB_NO_NATIVE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY . /src
# With a wheelhouse: install from it alone (no network, no compiler). Without one:
# a compiler for the Cython extensions and hnswlib, torch CPU from its own index, the
# rest from PyPI.
# Then what the daemon never loads goes (about 170 MB): torch's C++ headers, test
# programs and tools (torch_shm_manager stays), the packages' own test suites (onnx's
# 18 MB of backend test data among them), and pip.
# hadolint ignore=DL3008
RUN python3 -m venv /opt/venv \
    && if compgen -G '/src/wheelhouse/semcached-*.whl' > /dev/null; then \
        /opt/venv/bin/pip install --no-index --find-links /src/wheelhouse \
            "torch==${TORCH_VERSION}" "semcached[${EXTRAS}]"; \
    else \
        apt-get update \
        && apt-get install -y --no-install-recommends build-essential \
        && /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
        && /opt/venv/bin/pip install "/src[${EXTRAS}]"; \
    fi \
    && torch_dir=$(echo /opt/venv/lib/python3*/site-packages/torch) \
    && find "${torch_dir}/bin" -mindepth 1 -not -name torch_shm_manager -delete \
    && rm -rf "${torch_dir}/include" "${torch_dir}/test" "${torch_dir}"/lib/*.a \
    && find /opt/venv/lib/python3*/site-packages -depth -type d -name tests -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3*/site-packages/onnx/backend/test \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip \
    && /opt/venv/bin/semcached version

FROM ${BASE_IMAGE} AS runtime
ARG APP_UID=10001
ARG APP_GID=10001
LABEL org.opencontainers.image.title="semcached" \
      org.opencontainers.image.description="Cache-and-index daemon for LLM serving: semantic response cache and RAG chunk KV cache (CPU build, all-MiniLM-L6-v2 included)" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://example.invalid/semcached"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN if ! { ldconfig -p | grep -q 'libgomp.so.1' && ldconfig -p | grep -q 'libstdc++.so.6'; }; then \
        apt-get update \
        && apt-get install -y --no-install-recommends libgomp1 libstdc++6 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid "${APP_GID}" semcached \
    && useradd --uid "${APP_UID}" --gid "${APP_GID}" \
        --home-dir /var/lib/semcached --no-create-home --shell /usr/sbin/nologin semcached \
    && install -d -o "${APP_UID}" -g "${APP_GID}" -m 0750 /var/lib/semcached
COPY --from=build /opt/venv /opt/venv
# Inside a container the daemon listens on every interface (its default, 127.0.0.1,
# is for a bare host); its data lives in the volume; the shared-memory arena of the
# KV host tier goes in SEMCACHED_KV_SHM_DIR (size /dev/shm with --shm-size, or mount
# a memory-backed emptyDir there in Kubernetes).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    SEMCACHED_SERVER_HOST=0.0.0.0 \
    SEMCACHED_SERVER_PORT=8080 \
    SEMCACHED_STORAGE_DATA_DIR=/var/lib/semcached \
    SEMCACHED_KV_SHM_DIR=/dev/shm \
    SEMCACHED_LOG_FORMAT=json \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
VOLUME ["/var/lib/semcached"]
WORKDIR /var/lib/semcached
USER ${APP_UID}:${APP_GID}
EXPOSE 8080
# SIGTERM starts the graceful drain (README: Running it in production); the exit is 0.
STOPSIGNAL SIGTERM
# No curl in the image: the venv's python asks /livez (alive, even while loading).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SEMCACHED_SERVER_PORT', '8080') + '/livez', timeout=4)"]
ENTRYPOINT ["semcached", "serve"]
