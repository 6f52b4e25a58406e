# costtrace worker image (docs/operations.md). Multi-stage: wheels are built
# in the first stage; the runtime stage holds the interpreter, the installed
# wheels and nothing else (no pip, no sources, no build tools).
# The base is pinned by digest: the multi-arch index of python:3.11.11-slim-bookworm
# (the tag's final build). A mirror passes its own copy with
#   --build-arg PYTHON=<mirror>/python:3.11.11-slim-bookworm@sha256:<digest>
# This workplace has no Docker engine or registry access: the image is not built
# in CI here, and the digest was taken from public projects that pin the same
# tag, not pulled (tests/deploy/test_dockerfile.py checks the file and builds
# its wheels).
ARG PYTHON=python:3.11.11-slim-bookworm@sha256:081075da77b2b55c23c088251026fb69a7b2bf92471e491ff5fd75c192fd38e5

FROM ${PYTHON} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# the native model (native/) builds with Rust: rustup's minimal profile, the toolchain pinned
ARG RUST_TOOLCHAIN=1.95.0
ENV PATH=/root/.cargo/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev \
    && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
       | sh -s -- -y --profile minimal --default-toolchain "${RUST_TOOLCHAIN}" \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir --upgrade "pip>=24" "setuptools>=69"
COPY pyproject.toml README.md constraints.txt ./
COPY native native
COPY costtrace costtrace
RUN pip wheel --no-cache-dir --wheel-dir /wheels --constraint constraints.txt ".[fleet,api]"

FROM ${PYTHON} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    COSTTRACE_STATE_DIR=/var/lib/costtrace/state \
    COSTTRACE_HTTP_HOST=0.0.0.0 \
    COSTTRACE_HTTP_PORT=9400
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl \
    && pip uninstall -y pip setuptools wheel \
    && useradd --no-create-home --uid 10001 --user-group --shell /usr/sbin/nologin costtrace \
    && mkdir -p /var/lib/costtrace \
    && chown costtrace:costtrace /var/lib/costtrace
USER 10001:10001
WORKDIR /var/lib/costtrace
VOLUME ["/var/lib/costtrace"]
EXPOSE 9400
# /livez: the worker's event loop answers and its app has not crashed
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=4 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('COSTTRACE_HTTP_PORT', '9400') + '/livez', timeout=2)"]
ENTRYPOINT ["costtrace"]
CMD ["worker", "--role", "allocator"]
