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

# The web page's browser test (tests/api.rs) drives Debian's Chromium through chromedriver. A
# fresh CI machine has neither: install them when we may; otherwise that test fails saying how.
if ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver for the web page test" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
      || echo "could not install chromium; the browser test will fail (apt-get install -y chromium chromium-driver)" >&2
  else
    echo "chromedriver not found: the browser test will fail; install it with: apt-get install -y chromium chromium-driver" >&2
  fi
fi

if [ -z "${DATABASE_URL:-}" ]; then
  pg_start_throwaway
  trap pg_stop_throwaway EXIT
fi

cargo test --locked --all-targets "$@"
