#!/usr/bin/env bash
# End-to-end benchmark (see benches/e2e.rs). Starts a throwaway PostgreSQL (stock settings plus
# track_commit_timestamp, for latency) unless DATABASE_URL is set. Arguments go to the
# benchmark, e.g.: ./scripts/bench.sh --messages 200000 --mode flood
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/pg.sh
. scripts/pg.sh
if [ -z "${DATABASE_URL:-}" ]; then
  PG_EXTRA_OPTS="-c track_commit_timestamp=on" PG_DURABLE=1 pg_start_throwaway
  trap pg_stop_throwaway EXIT
fi
cargo bench --locked --bench e2e -- "$@"
