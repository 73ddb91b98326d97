#!/usr/bin/env bash
# What can be checked of the Docker image without a Docker engine: the release binary, built
# with the Dockerfile's command, starts, prints --help, and validates the shipped config.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -q 'cargo build --release --locked' Dockerfile
# The Dockerfile's dependency layer builds from Cargo.toml with stand-in sources: every target
# the manifest names must have one there, or `docker build` fails before compiling anything.
for target in $(grep -E '^(path|name) *=' Cargo.toml | sed -n 's/^name *= *"\(.*\)"/\1/p' | tail -n +2); do
  grep -q "benches/$target.rs" Dockerfile || { echo "Dockerfile: no stand-in for bench target $target"; exit 1; }
done
cargo build --release --locked
bin=target/release/twitch-chat-logger
"$bin" --help >/dev/null
"$bin" check --config config/config.toml >/dev/null
for f in examples/*.toml; do
  # token_file/password_file examples point at /run/secrets: check everything but those files.
  out=$("$bin" check --config "$f" 2>&1) || echo "$out" | grep -q "cannot read" || { echo "$out"; exit 1; }
done
echo "release binary: --help and check OK"
