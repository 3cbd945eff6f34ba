#!/bin/sh
# make bench, workers part: examples/http_server.lua with --workers 1 and 2 on
# a CPU-bound route (GET /work?ms=1: about a millisecond of Lua work per
# request), under wrk (2 threads, 64 keep-alive connections, SECS seconds).
# 2r: two workers with a listener each (--reuseport).
# Prints requests/s for each, the ratio 2 workers / 1 worker, and each
# worker's share of the accepted connections (from what the workers print
# when TERM stops them). Nothing is pinned: the workers and wrk share the
# machine's cores. Needs wrk.
set -eu
cd "$(dirname "$0")/.."
SECS=${SECS:-5}
. bench/lib.sh
command -v wrk >/dev/null || { echo "workers: wrk is missing, skipped"; exit 0; }
log=bench/build/workers.log
for w in 1 2 2r; do
  port=$(free_port)
  opts="--workers ${w%r}"
  [ "$w" = 2r ] && opts="$opts --reuseport"
  # shellcheck disable=SC2086
  lua5.4 examples/http_server.lua $opts 127.0.0.1 "$port" . 2>"$log.$w" &
  pid=$!
  wait_listen "$port" $pid "http_server.lua --workers $w"
  sleep 0.3
  out=$(timeout 60 wrk -t2 -c64 -d"${SECS}s" "http://127.0.0.1:$port/work?ms=1")
  kill -TERM $pid
  wait $pid || true
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  echo "$rps" > "$log.rps.$w"
  shares=$(awk '/connections accepted/ {gsub(/[(]/, ""); print $4 ":" $6}' "$log.$w" | tr '\n' ' ')
  printf 'workers %-3s %10s requests/s   accepted per worker: %s\n' "$w" "$rps" "$shares"
done
awk -v a="$(cat "$log.rps.1")" -v b="$(cat "$log.rps.2")" -v c="$(cat "$log.rps.2r")" \
  'BEGIN {printf "ratio 2 workers / 1 worker: %.2f (shared listener), %.2f (reuseport)\n", b / a, c / a}'
