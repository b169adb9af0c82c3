# syntax=docker/dockerfile:1.7
# checkov:skip=CKV_DOCKER_2: one image runs many processes (gateway, monitor, dashboard, MLflow, KFP steps); Kubernetes probes each by its own path
# The platform image: the locked dependencies of the `platform` extra (gateway, monitor, dashboard, MLflow, `lm`
# and the pipelines) plus the learning_machine package, nothing else: no MLServer, alibi or alibi-detect, which
# only the serving image (serving/Dockerfile) carries. Every KFP component runs in it (PLATFORM_IMAGE in
# learning_machine/components/__init__.py), so nothing is pip-installed at run time.
#   docker build -t ghcr.io/learning-machine/platform:0.1.0 .
# It cannot be built on the development machines (no Docker there); see docs/pipelines.md.
ARG PYTHON_VERSION=3.11
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first: this layer is rebuilt only when uv.lock changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv uv sync --frozen --no-dev --extra platform --no-install-project
# Then the package as a real wheel (not editable). The top-level components/, pipelines/, serving/ and
# dashboard/ are links into learning_machine/, which holds them: copying the package copies them all.
COPY README.md ./
COPY learning_machine ./learning_machine
RUN --mount=type=cache,target=/root/.cache/uv uv sync --frozen --no-dev --extra platform --no-editable

FROM python:${PYTHON_VERSION}-slim-bookworm
# Provenance every change record names (docs/change-control.md): the commit built, the image's own reference.
#   docker build --build-arg LM_CODE_COMMIT=$(git rev-parse HEAD) --build-arg LM_IMAGE=ghcr.io/...:0.1.0 .
ARG LM_CODE_COMMIT=""
ARG LM_IMAGE=""
ENV LM_CODE_COMMIT=${LM_CODE_COMMIT} LM_IMAGE=${LM_IMAGE}
# libgomp1: the OpenMP runtime xgboost's wheel expects from the system.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin lm
COPY --from=build /opt/venv /opt/venv
# KFP starts lightweight components with `python3 -m kfp.dsl.executor_main`: the venv comes first on PATH.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/home/lm LM_HOME=/tmp/lm MPLCONFIGDIR=/tmp/matplotlib
USER 10001
WORKDIR /home/lm
CMD ["lm", "--help"]
