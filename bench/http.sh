#!/bin/sh
# make bench, HTTP part: examples/http_server.lua against a Python asynchat
# responder (bench/py_http_server.py) and the same responder written with luv
# (bench/luv_http_server.lua), each pinned to CPU 1:
#  - wrk (pinned to CPU 0), 100 keep-alive connections on /hello for SECS
#    seconds: requests/s, p99 latency, server CPU time per request (utime+stime
#    from /proc/PID/stat just before and after wrk);
#  - a 256 MiB push to one connection (bench/push_server.lua; loadgen sink):
#    MB/s and server CPU seconds per GiB.
# Needs: gcc, lua5.4, python3, wrk, lua-luv (Debian packages). Peers that are
# missing are skipped.
set -eu
cd "$(dirname "$0")/.."
SECS=${SECS:-5}
RUNS=${RUNS:-3}
. bench/lib.sh
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

start_server() {  # NAME ROLE PORT -> sets pid
  case $1 in
    lua-asyncore) if [ "$2" = http ]; then
                    $PIN1 lua5.4 examples/http_server.lua 127.0.0.1 "$3" . 2>/dev/null &
                  else
                    $PIN1 lua5.4 bench/push_server.lua 127.0.0.1 "$3" &
                  fi ;;
    py-asynchat)  $PIN1 python3 bench/py_http_server.py "$2" 127.0.0.1 "$3" & ;;
    luv)          $PIN1 lua5.4 bench/luv_http_server.lua "$2" 127.0.0.1 "$3" & ;;
  esac
  pid=$!
  # wait until it listens (without connecting: a push server would start pushing)
  wait_listen "$3" $pid "$1"
}

peers="lua-asyncore py-asynchat"
lua5.4 -e 'require "luv"' 2>/dev/null && peers="$peers luv"

if command -v wrk >/dev/null; then
  printf '%-14s %12s %10s %14s\n' server "requests/s" "p99" "CPU us/req"
  for name in $peers; do
    : > bench/build/http.$name
    r=0
    while [ $r -lt "$RUNS" ]; do
      port=$(free_port)
      start_server $name http "$port"
      t0=$(cpu_ticks $pid)
      out=$($PIN0 timeout 60 wrk -t1 -c100 -d"${SECS}s" --latency "http://127.0.0.1:$port/hello")
      t1=$(cpu_ticks $pid)
      kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      cpu=$(awk "BEGIN {printf \"%.2f\", ($t1 - $t0) / $hz * 1e6 / $reqs}")
      echo "$rps $cpu $p99" >> bench/build/http.$name
      r=$((r + 1))
    done
    rps=$(cut -d' ' -f1 bench/build/http.$name | median)
    cpu=$(cut -d' ' -f2 bench/build/http.$name | median)
    p99=$(sort -k2 -n bench/build/http.$name | awk -v n="$RUNS" 'NR == int((n+1)/2) {print $3}')
    printf '%-14s %12.0f %10s %14s\n' "$name" "$rps" "$p99" "$cpu"
  done
  echo "(wrk -t1 -c100 -d${SECS}s on /hello; median of $RUNS runs)"
else
  echo "wrk is not installed: the HTTP figures are skipped (apt-get install wrk)"
fi

echo
printf '%-14s %12s %16s\n' server "push MB/s" "CPU s/GiB"
for name in $peers; do
  : > bench/build/push.$name
  r=0
  while [ $r -lt "$RUNS" ]; do
    port=$(free_port)
    start_server $name push "$port"
    # one transfer to warm up (TCP buffer autotuning starts small on a new
    # connection route), then the measured one
    $PIN0 timeout 120 bench/build/loadgen sink 127.0.0.1 "$port" "$pid" >/dev/null
    out=$($PIN0 timeout 120 bench/build/loadgen sink 127.0.0.1 "$port" "$pid")
    kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
    echo "$out" | sed -n 's/.*mb_per_s=\([0-9.]*\) cpu_s_per_gib=\([0-9.]*\).*/\1 \2/p' >> bench/build/push.$name
    r=$((r + 1))
  done
  mbs=$(cut -d' ' -f1 bench/build/push.$name | median)
  cpu=$(cut -d' ' -f2 bench/build/push.$name | median)
  printf '%-14s %12s %16s\n' "$name" "$mbs" "$cpu"
done
echo "(256 MiB pushed in one call to a connection, read by bench/build/loadgen sink, after one"
echo " warm-up transfer; CPU from the connect to the end of stream; median of $RUNS runs)"
