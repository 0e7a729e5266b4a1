# dataminer control plane image. The build steps live in scripts/build-release.sh (CI runs
# the same script), so this file only arranges stages.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN OUT=/dist bash scripts/build-release.sh

FROM debian:bookworm-slim
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
