# syntax=docker/dockerfile:1
#
# m365-devo: one image with every binary of the workspace (m365-producer, m365-consumer,
# m365-forwarder, the all-in-one m365-devo and the m365-sim simulator). docker-compose.yml
# builds it once and picks the binary with `command:`.
#
#   docker build -t m365-devo:local .
#   docker run --rm -v "$PWD/my-config.yaml:/etc/m365-devo/config.yaml:ro" m365-devo:local \
#       m365-producer --config /etc/m365-devo/config.yaml
#
# Build stage: librdkafka is compiled from source by rdkafka-sys (gcc, make, perl) and links
# the system OpenSSL (libssl-dev); aws-lc-sys (rustls' crypto provider) may fall back to cmake.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev pkg-config cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target folders are BuildKit caches, so a source change rebuilds only the
# workspace crates. The binaries are copied out of the cache mount before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && for bin in m365-producer m365-consumer m365-forwarder m365-devo m365-sim; do \
         cp "target/release/$bin" /out/; \
       done

# Runtime stage: glibc of the same Debian release, OpenSSL 3 for librdkafka, the CA bundle
# for the Microsoft endpoints, and curl for the container health checks (/healthz).
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
    && rm -rf /var/lib/apt/lists/*
# A fixed non-root uid/gid so files shared through volumes (the simulator's certificates,
# mode 0600 keys) are readable by every service of the compose stack.
RUN groupadd --system --gid 10001 m365 \
    && useradd --system --uid 10001 --gid m365 --home-dir /var/lib/m365-devo --shell /usr/sbin/nologin m365 \
    && mkdir -p /etc/m365-devo /var/lib/m365-devo /var/lib/m365-sim/certs /var/lib/m365-sim/received \
    && chown -R m365:m365 /var/lib/m365-devo /var/lib/m365-sim
COPY --from=builder /out/ /usr/local/bin/
USER m365:m365
WORKDIR /var/lib/m365-devo
# /metrics, /healthz and /readyz (metrics.listen_address, default 0.0.0.0:9464).
EXPOSE 9464
CMD ["m365-devo", "--help"]
