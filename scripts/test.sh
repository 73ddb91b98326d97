#!/usr/bin/env bash
# Runs the whole test suite: formatting-independent, self-contained.
#
# With DATABASE_URL unset it starts a throwaway PostgreSQL (initdb into a temp dir, loopback
# only, random port), points the tests at it, and removes it afterwards. With DATABASE_URL set
# it uses that server (the role must be allowed to CREATE DATABASE; each test makes its own).
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/pg.sh
. scripts/pg.sh

if [ -z "${DATABASE_URL:-}" ]; then
  pg_start_throwaway
  trap pg_stop_throwaway EXIT
fi

cargo test --locked --all-targets "$@"
