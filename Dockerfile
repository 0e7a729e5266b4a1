# dataminer images: `--target control-plane` and `--target agent`. The build steps live in
# scripts (CI runs the same ones), so this file only arranges stages.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN OUT=/dist bash scripts/build-release.sh

FROM debian:bookworm-slim AS agent
COPY requirements-agent.txt scripts/install-agent-tools.sh /tmp/tools/
RUN mkdir -p /tmp/tools/scripts && mv /tmp/tools/install-agent-tools.sh /tmp/tools/scripts/ \
 && bash /tmp/tools/scripts/install-agent-tools.sh && rm -rf /tmp/tools \
 && useradd --system --uid 10001 --home-dir /var/lib/dataminer --create-home dataminer
COPY --from=build /dist/agent /usr/local/bin/agent
USER 10001
# The shared data root is mounted here (hostPath / PVC / SeaweedFS FUSE).
ENV DATAMINER_DATA_ROOT=/data \
    DATAMINER_METRICS_LISTEN=0.0.0.0:9090
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/agent"]

FROM debian:bookworm-slim AS control-plane
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/dataminer --create-home dataminer
COPY --from=build /dist/control-plane /usr/local/bin/control-plane
USER 10001
WORKDIR /var/lib/dataminer
# Listening beyond loopback requires DATAMINER_USER_TOKEN and DATAMINER_AGENT_TOKEN.
ENV DATAMINER_LISTEN=0.0.0.0:8080 \
    DATAMINER_STATE_DIR=/var/lib/dataminer
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/control-plane"]
