# syntax=docker/dockerfile:1
#
# The beatmon image: one image for `beatmon train`, `beatmon replay` and
# `beatmon monitor` (see docker-compose.yml). The entry point is `beatmon`, so
# the container's command is the subcommand and its options:
#
#   docker build -t beatmon:local .
#   docker run --rm beatmon:local --help
#
# Python 3.11 matches requires-python in pyproject.toml and the version CI
# runs; tests/config/test_compose.py keeps the three in step.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: install the project and its dependencies into /opt/venv --------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Every dependency ships binary wheels for CPython 3.11 on manylinux, so the
# builder needs no compiler either. The pip cache mount keeps the large wheels
# (TensorFlow) across rebuilds without putting them in a layer.
COPY pyproject.toml README.md ./
COPY beatmon ./beatmon
COPY models ./models
COPY monitor ./monitor
COPY producers ./producers
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --upgrade pip \
    && pip install . \
    && beatmon --version

# --- runtime: the venv, the settings files and an unprivileged user -----------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="beatmon" \
      org.opencontainers.image.description="Streaming ECG beat monitor" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg

# /models is where compose mounts the `models` volume. A new named volume
# takes the owner of the folder it is mounted over, so the trainer, which runs
# as beatmon, can write the bundle there.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin beatmon \
    && mkdir -p /models \
    && chown beatmon:beatmon /models

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
COPY config ./config

USER beatmon

ENTRYPOINT ["beatmon"]
CMD ["--help"]
