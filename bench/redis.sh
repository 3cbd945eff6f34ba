#!/bin/sh
# make bench, Redis part: examples/redis_server.lua against redis-server (the
# C limit), both pinned to CPU 1, driven by redis-benchmark (pinned to CPU 0):
# 50 connections, -t ping,set,get,incr, with 16 commands per write (-P 16) and
# without pipelining. Prints requests/s (all requests / the sum of the tests'
# times) and server CPU per request (utime+stime from /proc/PID/stat just before
# and after redis-benchmark, CONFIG GET and connection set-up included), median
# of RUNS runs. Needs redis-tools (redis-benchmark) and redis-server; skipped
# when they are missing.
set -eu
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
. bench/lib.sh
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

if ! command -v redis-benchmark >/dev/null; then
  echo "redis.sh: redis-benchmark missing (apt-get install redis-tools): skipped"
  exit 0
fi
peers="lua-asyncore"
command -v redis-server >/dev/null && peers="$peers redis-server"

start_server() {  # NAME PORT -> sets pid
  case $1 in
    lua-asyncore) $PIN1 lua5.4 examples/redis_server.lua 127.0.0.1 "$2" 2>/dev/null & ;;
    redis-server) $PIN1 redis-server --port "$2" --bind 127.0.0.1 --save '' --appendonly no \
                    --daemonize no >/dev/null & ;;
  esac
  pid=$!
  i=0
  until redis-cli -p "$2" ping >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 200 ] || { kill $pid; echo "$1 did not start" >&2; return 1; }
    sleep 0.05
  done
}

printf '%-14s %4s %12s %12s\n' server P "requests/s" "CPU us/req"
for P in 16 1; do
  if [ $P = 16 ]; then n=200000; else n=50000; fi
  for name in $peers; do
    : > bench/build/redis.$name.$P
    r=0
    while [ $r -lt "$RUNS" ]; do
      port=$(free_port)
      start_server $name "$port"
      t0=$(cpu_ticks $pid)
      out=$($PIN0 timeout 120 redis-benchmark -p "$port" -c 50 -n $n -P $P -t ping,set,get,incr -q --csv)
      t1=$(cpu_ticks $pid)
      kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
      # five tests of n requests each; --csv gives each test's requests/s
      secs=$(echo "$out" | awk -F'","' -v n=$n 'NR > 1 {gsub(/"/, "", $2); s += n / $2} END {print s}')
      rps=$(awk "BEGIN {printf \"%.0f\", 5 * $n / $secs}")
      cpu=$(awk "BEGIN {printf \"%.2f\", ($t1 - $t0) / $hz * 1e6 / (5 * $n)}")
      echo "$rps $cpu" >> bench/build/redis.$name.$P
      r=$((r + 1))
    done
    rps=$(cut -d' ' -f1 bench/build/redis.$name.$P | median)
    cpu=$(cut -d' ' -f2 bench/build/redis.$name.$P | median)
    printf '%-14s %4s %12s %12s\n' "$name" "$P" "$rps" "$cpu"
  done
done
