# shellcheck shell=bash
# Helpers to run a throwaway PostgreSQL for tests and benchmarks. Source it, then call
# pg_start_throwaway (exports DATABASE_URL, PG_BIN, PG_RUN_AS) and pg_stop_throwaway.

pg_bin_dir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
    return
  fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$d" ] || [ ! -x "$d/initdb" ]; then
    echo "PostgreSQL server binaries not found (initdb); install postgresql, or set DATABASE_URL" >&2
    return 1
  fi
  echo "$d"
}

pg_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

pg_start_throwaway() {
  PG_BIN=$(pg_bin_dir)
  PG_TMP=$(mktemp -d "${PG_TMP_PARENT:-/tmp}/tcl-pg.XXXXXX")
  chmod 755 "$PG_TMP"
  PG_RUN_AS=""
  if [ "$(id -u)" = 0 ]; then
    # initdb refuses to run as root: run the server as an unprivileged user.
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$PG_TMP"
    PG_RUN_AS="runuser -u postgres --"
  fi
  echo postgres > "$PG_TMP/pw"
  $PG_RUN_AS "$PG_BIN/initdb" -D "$PG_TMP/data" -U postgres --pwfile="$PG_TMP/pw" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-locale >"$PG_TMP/initdb.log" 2>&1 \
    || { cat "$PG_TMP/initdb.log" >&2; return 1; }
  PG_PORT=$(pg_free_port)
  # Tests trade durability for speed; the benchmark (PG_DURABLE=1) measures stock settings.
  local durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  [ -n "${PG_DURABLE:-}" ] && durability=""
  $PG_RUN_AS "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w -t 60 start \
    -o "-p $PG_PORT -k $PG_TMP -c listen_addresses=127.0.0.1 -c max_connections=300 $durability ${PG_EXTRA_OPTS:-}" \
    >/dev/null || { cat "$PG_TMP/server.log" >&2; return 1; }
  export DATABASE_URL="postgres://postgres:postgres@127.0.0.1:$PG_PORT/postgres"
  export PG_BIN PG_RUN_AS PG_TMP PG_PORT
  echo "throwaway PostgreSQL on 127.0.0.1:$PG_PORT ($PG_TMP)" >&2
}

pg_stop_throwaway() {
  [ -n "${PG_TMP:-}" ] || return 0
  $PG_RUN_AS "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_TMP"
}
