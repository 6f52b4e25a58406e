# costtrace worker image. Multi-stage: wheels are built in the first stage,
# the runtime stage has only the interpreter, the wheels and the code.
# Not built in CI yet: this workplace has no Docker engine (issue 5 owns it).
ARG PYTHON=python:3.11.11-slim-bookworm

FROM ${PYTHON} AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip build
COPY pyproject.toml README.md ./
COPY costtrace costtrace
COPY schemas schemas
COPY topics topics
COPY workers workers
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[fleet]"

FROM ${PYTHON}
RUN useradd --create-home --uid 10001 costtrace \
    && mkdir -p /var/lib/costtrace && chown costtrace /var/lib/costtrace
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
USER costtrace
ENV COSTTRACE_STATE_DIR=/var/lib/costtrace/state
VOLUME ["/var/lib/costtrace"]
ENTRYPOINT ["costtrace"]
CMD ["worker", "--role", "allocator"]
