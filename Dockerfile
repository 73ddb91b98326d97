# Build: docker build -t twitch-chat-logger .
# Multi-stage: dependencies compile in their own layer, cached until Cargo.toml/Cargo.lock change.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Stand-ins for every target Cargo.toml names, so the manifest loads before the sources come.
RUN mkdir src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/e2e.rs \
    && cargo build --release --locked \
    && rm -rf src benches
COPY src src
COPY benches benches
COPY migrations migrations
COPY migrations_sqlite migrations_sqlite
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
# TLS roots are compiled in (webpki-roots): no ca-certificates package needed.
RUN useradd --system --uid 10001 --home-dir /app logger \
    && mkdir -p /app/config /app/data \
    && chown logger /app/data
COPY --from=build /src/target/release/twitch-chat-logger /usr/local/bin/twitch-chat-logger
WORKDIR /app
USER logger
ENV HTTP_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["twitch-chat-logger", "healthcheck"]
# No config is baked in: mount ./config to use config/config.toml, or set the original's
# variables and mount nothing (env-only mode).
ENTRYPOINT ["twitch-chat-logger"]
CMD ["run"]
