#!/usr/bin/env bash
# Log API load figures (issue #17): requests per second and latency percentiles for "a user's
# month" and "a channel's day" on a chat_messages table of ROWS rows (default 10 million),
# while the logger ingests chat from a fake Twitch server on loopback. Not a CI test.
#
# Needs wrk (apt-get install -y wrk), python3 and PostgreSQL's server binaries. The database
# (about 4 GB at 10 million rows) lives under target/api-bench/ and is removed afterwards.
#
#   ./scripts/api-bench.sh                       # 10,000,000 rows, 20 s per route
#   ROWS=1000000 DURATION=10s ./scripts/api-bench.sh
#   BIN=target/release/twitch-chat-logger ./scripts/api-bench.sh   # a release build, if made
#
# Data: 20 channels (c0…c19), 5,000 users (u0…u4999) writing in every channel, spread evenly
# over 2025 (about 1,370 lines a channel a day, 8 a user a channel a month). Each request picks
# a random channel, user and month or day. Ingest: RATE messages a second into the same channels.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-10000000}
DURATION=${DURATION:-20s}
CONNS=${CONNS:-8}
RATE=${RATE:-200}
BIN=$(realpath "${BIN:-target/debug/twitch-chat-logger}")
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
[ -x "$BIN" ] || { echo "$BIN not found: cargo build" >&2; exit 1; }

# shellcheck source=scripts/pg.sh
. scripts/pg.sh
mkdir -p target/api-bench
chmod 755 target/api-bench
work=$(mktemp -d "$PWD/target/api-bench/run.XXXXXX")
PG_TMP_PARENT=$PWD/target/api-bench PG_DURABLE=1 pg_start_throwaway
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pg_stop_throwaway
  rm -rf "$work"
}
trap cleanup EXIT
psql() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql "$DATABASE_URL" -c "CREATE DATABASE bench"
db_url=${DATABASE_URL%/postgres}/bench
DATABASE_URL=$db_url "$BIN" migrate >/dev/null

echo "filling chat_messages with $ROWS rows…" >&2
start=$(date +%s)
step=1000000
for ((lo = 1; lo <= ROWS; lo += step)); do
  hi=$((lo + step - 1 < ROWS ? lo + step - 1 : ROWS))
  psql "$db_url" -c "
    INSERT INTO chat_messages (message_id, channel, room_id, user_id, username, display_name, text, badges,
                               color, is_subscriber, sent_at, received_at)
    SELECT md5(i::text)::uuid::text, 'c' || (i % 20), (1000 + i % 20)::text, ((i / 20) % 5000)::text,
           'u' || ((i / 20) % 5000), 'U' || ((i / 20) % 5000), 'message number ' || i || ' with a few words in it',
           '{\"subscriber\":12}', '#1E90FF', true,
           timestamptz '2025-01-01' + (i::float8 / $ROWS * 365) * interval '1 day',
           timestamptz '2025-01-01' + (i::float8 / $ROWS * 365) * interval '1 day'
    FROM generate_series($lo, $hi) i"
done
psql "$db_url" -c "ANALYZE chat_messages"
echo "filled in $(($(date +%s) - start)) s; $(psql "$db_url" -At -c "SELECT pg_size_pretty(pg_database_size('bench'))")" >&2

# The fake Twitch server: answers the handshake and JOINs, then sends RATE PRIVMSGs a second.
irc_port=$(pg_free_port)
python3 - "$irc_port" "$RATE" <<'PY' &
import socket, sys, threading, time, uuid
port, rate = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen()
def flood(conn, chans):
    i = 0
    while True:
        t0 = time.time()
        out = []
        for _ in range(rate // 10 or 1):
            ch = chans[i % len(chans)]; i += 1
            ts = int(time.time() * 1000)
            out.append(f"@badge-info=;badges=;color=#FF0000;display-name=Live{i % 300};emotes=;first-msg=0;flags=;id={uuid.uuid4()};mod=0;room-id=1;subscriber=0;tmi-sent-ts={ts};turbo=0;user-id={90000 + i % 300};user-type= :live{i % 300}!live{i % 300}@live{i % 300}.tmi.twitch.tv PRIVMSG #{ch} :live message {i}\r\n")
        try:
            conn.sendall("".join(out).encode())
        except OSError:
            return
        time.sleep(max(0, 0.1 - (time.time() - t0)))
def serve(conn):
    f = conn.makefile("r", encoding="utf-8", newline="\r\n")
    nick = "justinfan1"; chans = []; started = False
    for line in f:
        line = line.strip()
        cmd, _, rest = line.partition(" ")
        if cmd == "CAP": conn.sendall(b":tmi.twitch.tv CAP * ACK :twitch.tv/tags twitch.tv/commands\r\n")
        elif cmd == "NICK":
            nick = rest; conn.sendall(f":tmi.twitch.tv 001 {nick} :Welcome, GLHF!\r\n:tmi.twitch.tv 376 {nick} :>\r\n".encode())
        elif cmd == "JOIN":
            for ch in rest.split(","):
                ch = ch.lstrip("#"); chans.append(ch)
                conn.sendall(f":{nick}!{nick}@{nick}.tmi.twitch.tv JOIN #{ch}\r\n".encode())
            if not started:
                started = True; threading.Thread(target=flood, args=(conn, chans), daemon=True).start()
        elif cmd == "PING": conn.sendall(f":tmi.twitch.tv PONG tmi.twitch.tv {rest}\r\n".encode())
while True:
    c, _ = srv.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
pids+=($!)

http_port=$(pg_free_port)
channels=$(seq -s, 0 19 | sed 's/\([0-9]\+\)/"c\1"/g')
cat >"$work/config.toml" <<EOF
[twitch]
server = "irc://127.0.0.1:$irc_port"
[batch]
spool_dir = "$work/spool"
[http]
listen = "127.0.0.1:$http_port"
[accounts.default]
[groups.default]
accounts = ["default"]
channels = [$channels]
EOF
(cd "$work" && DATABASE_URL=$db_url TWITCH_AUTH_URL=http://127.0.0.1:1 RUST_LOG=warn "$BIN" --config config.toml) &
pids+=($!)
# Start-up migrations build indexes on the filled table: wait for them (up to 30 min).
for i in $(seq 1800); do
  curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break
  [ "$i" = 1800 ] && { echo "the logger did not get ready" >&2; exit 1; }
  sleep 1
done
sleep 3

cat >"$work/user_month.lua" <<'EOF'
math.randomseed(os.time())
request = function()
  return wrk.format("GET", string.format("/channel/c%d/user/u%d/2025/%d", math.random(0, 19), math.random(0, 4999), math.random(1, 12)))
end
EOF
cat >"$work/channel_day.lua" <<'EOF'
math.randomseed(os.time() + 1)
request = function()
  return wrk.format("GET", string.format("/channel/c%d/2025/%d/%d", math.random(0, 19), math.random(1, 12), math.random(1, 28)))
end
EOF
count() { psql "$db_url" -At -c "SELECT count(*) FROM chat_messages WHERE sent_at > now() - interval '1 day'"; }
echo "a sample of each:" >&2
curl -s "http://127.0.0.1:$http_port/channel/c3/user/u42/2025/5" | head -3 >&2
curl -s "http://127.0.0.1:$http_port/channel/c3/2025/5/17" | wc -l >&2
for route in user_month channel_day; do
  before=$(count)
  echo "== $route ($CONNS connections, $DURATION, $RATE messages/s ingested meanwhile)"
  wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s "$work/$route.lua" "http://127.0.0.1:$http_port" \
    | grep -E "Requests/sec|Transfer/sec|50%|90%|99%|Non-2xx|Socket errors|requests in"
  echo "rows ingested during the run: $(($(count) - before))"
done
