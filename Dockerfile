# syntax=docker/dockerfile:1
#
# shadow-proxy container image. Build from the repository root:
#
#   docker build -t shadow-proxy:0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#
# Stage "build" makes a wheel of the package (shipped policies included) and installs it, not
# editable, into a venv. Stage "runtime" copies only that venv. The process runs as uid/gid 10001
# and writes only to /var/lib/shadow-proxy (and /tmp with `run --workers N`), so the root
# filesystem can be read-only: docker run --read-only --tmpfs /tmp; readOnlyRootFilesystem in
# Kubernetes with an emptyDir on /tmp.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build ----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy/ proxy/
COPY policies/ policies/
COPY deploy/docker/config.yaml /src/default-config.yaml

# The venv has no pip of its own (less to patch in the runtime image): the build stage's pip
# installs into it with --python. The last line fails the build if the installed package cannot
# load the default config or find its shipped policy.
RUN pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv --without-pip /opt/shadow-proxy \
 && pip --python /opt/shadow-proxy/bin/python install /dist/shadow_proxy-*.whl \
 && /opt/shadow-proxy/bin/shadow-proxy check -c /src/default-config.yaml

# --- runtime --------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="shadow-proxy" \
      org.opencontainers.image.description="Async HTTP proxy that shadows, assists and promotes an ML model next to a legacy decision service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="python:3.11-slim"

# Audit files and the spill folder live under /var/lib/shadow-proxy: a volume (emptyDir or PVC in
# Kubernetes). The image's copy is owned by 10001 so a fresh Docker volume is writable too.
RUN groupadd --system --gid 10001 shadow-proxy \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/shadow-proxy --shell /usr/sbin/nologin shadow-proxy \
 && install -d -o 10001 -g 10001 -m 0750 \
      /var/lib/shadow-proxy /var/lib/shadow-proxy/audit /var/lib/shadow-proxy/spill

COPY --from=build /opt/shadow-proxy /opt/shadow-proxy
# A placeholder that starts; mount your own config over it.
COPY deploy/docker/config.yaml /etc/shadow-proxy/config.yaml

ENV PATH="/opt/shadow-proxy/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1

WORKDIR /var/lib/shadow-proxy
USER 10001:10001
VOLUME ["/var/lib/shadow-proxy"]

# 8080: client traffic (listen.port); 9901: admin API, /healthz, /readyz, /metrics (admin.port).
EXPOSE 8080 9901

# SIGTERM starts the drain: not ready, stop accepting, finish requests (shutdown.grace, 20s),
# finish model calls (shutdown.mirror_grace, 5s), seal the audit trail. Give it 30s+ to finish
# (docker stop -t 35; terminationGracePeriodSeconds in Kubernetes).
STOPSIGNAL SIGTERM

# No curl in the image: Python's urllib. A non-2xx answer or a refused connection raises, so the
# exit status is non-zero. Set SHADOW_PROXY_ADMIN__PORT if the config moves the admin port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SHADOW_PROXY_ADMIN__PORT', '9901'), timeout=3)"]

ENTRYPOINT ["shadow-proxy"]
CMD ["run", "-c", "/etc/shadow-proxy/config.yaml"]
