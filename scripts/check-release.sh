#!/usr/bin/env bash
# What can be checked of the Docker image without a Docker engine: the release binary, built
# with the Dockerfile's command, starts, prints --help, and validates the shipped config and
# every example where it is meant to run.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -q 'cargo build --release --locked' Dockerfile
# The Dockerfile's dependency layer builds from Cargo.toml with stand-in sources: every target
# the manifest names must have one there, or `docker build` fails before compiling anything.
for target in $(grep -E '^(path|name) *=' Cargo.toml | sed -n 's/^name *= *"\(.*\)"/\1/p' | tail -n +2); do
  grep -q "benches/$target.rs" Dockerfile || { echo "Dockerfile: no stand-in for bench target $target"; exit 1; }
done
cargo build --release --locked
bin=$PWD/target/release/twitch-chat-logger
"$bin" --help >/dev/null
"$bin" check --config config/config.toml >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for f in examples/*; do
  case "$f" in
    *.toml)
      # Secrets come from /run/secrets (Docker/Kubernetes): stand-in files in a temp dir.
      mkdir -p "$work/secrets"
      for s in $(grep -o '/run/secrets/[A-Za-z0-9_.-]*' "$f" || true); do
        printf 'oauth:standin_secret\n' >"$work/secrets/${s#/run/secrets/}"
      done
      sed "s#/run/secrets/#$work/secrets/#g" "$f" >"$work/example.toml"
      out=$("$bin" check --config "$work/example.toml" 2>&1) || { echo "$f:"; echo "$out"; exit 1; }
      ;;
    *.env)
      # The original's variables, env-only mode: no config file, only these in the environment.
      mkdir -p "$work/empty"
      mapfile -t vars < <(grep -E '^[A-Z_]+=' "$f")
      out=$(cd "$work/empty" && env -i PATH="$PATH" "${vars[@]}" "$bin" check 2>&1) || { echo "$f:"; echo "$out"; exit 1; }
      echo "$out" | grep -q "environment only" || { echo "$f: not checked in env-only mode"; echo "$out"; exit 1; }
      ;;
    */kubernetes)
      # The ConfigMap's config.toml (the indented block under `config.toml: |`), checked as pod
      # logger-0 would run it (tests/kubernetes.rs checks every pod with the real env).
      awk '/config.toml: \|/{on=1; next} on && /^[^ ]/{on=0} on{sub(/^    /, ""); print}' \
        "$f/configmap.yaml" >"$work/k8s.toml"
      [ -s "$work/k8s.toml" ] || { echo "$f: no config.toml in configmap.yaml"; exit 1; }
      out=$(HOSTNAME=logger-0 DATABASE_URL=postgres://u@db/twitch "$bin" check --config "$work/k8s.toml" 2>&1) \
        || { echo "$f:"; echo "$out"; exit 1; }
      echo "$out" | grep -q "shard 1/3" || { echo "$f: pod logger-0 is not shard 1/3"; echo "$out"; exit 1; }
      ;;
    *)
      echo "$f: an example check-release.sh does not know how to check"
      exit 1
      ;;
  esac
done
echo "release binary: --help and check of the config and every example OK"
