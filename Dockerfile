# syntax=docker/dockerfile:1
#
# sse-fanout: multi-stage build.
#   docker build -t sse-fanout .
#   docker run --rm -p 3000:3000 -e REDIS_URL=redis://host.docker.internal:6379 sse-fanout
# (or `docker compose up --build` for Redis + two backends + nginx)

# ---- build stage -----------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# The whole source is copied (Cargo.toml, Cargo.lock, src/, web/, tests/ and any
# workspace member such as bench/), so workspace layouts keep working. Build
# caching comes from BuildKit cache mounts: the cargo registry and target/ survive
# between builds, so only changed crates are recompiled.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin sse-fanout \
 && cp target/release/sse-fanout /usr/local/bin/sse-fanout \
 && strip --strip-debug /usr/local/bin/sse-fanout

# ---- runtime stage ---------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates: needed for rediss:// (TLS) connections.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /app --shell /usr/sbin/nologin app

WORKDIR /app
COPY --from=builder /usr/local/bin/sse-fanout /usr/local/bin/sse-fanout
# The page served at `/` (SPEC §6) is built into the binary: no web/ to copy.

ENV HOST=0.0.0.0 \
    PORT=3000 \
    RUST_LOG=info

USER 10001:10001
EXPOSE 3000

# Liveness probe without curl: the binary GETs http://127.0.0.1:$PORT/health/live
# and exits 0 (healthy) or 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/sse-fanout", "healthcheck"]

# SIGTERM from `docker stop` triggers the graceful shutdown (SPEC §7).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sse-fanout"]
