#!/bin/sh
# make bench: examples/echo_server.lua against the same server written with
# Python 3.11's asyncore (bench/py_echo_server.py). Each server is pinned to
# CPU 1, the C load client (bench/loadgen.c) to CPU 0. For 1 and 100
# connections doing 64-byte request/response round trips, it prints round
# trips per second, the server's CPU time per round trip (utime+stime from
# /proc/PID/stat over the measured window) and the ratio of the two servers.
# On a 2-core machine the client is often the limit, so CPU per round trip is
# the figure that ranks the servers. Needs: gcc, lua5.4, python3, taskset.
set -eu
cd "$(dirname "$0")/.."
SECS=${SECS:-3}
RUNS=${RUNS:-3}
. bench/lib.sh

# run NAME CONNS: one measurement, prints "rt_per_s cpu_us_per_rt"
measure() {
  name=$1 conns=$2 port=$(free_port)
  case $name in
    lua) $PIN1 lua5.4 examples/echo_server.lua 127.0.0.1 "$port" 2>/dev/null & ;;
    py)  $PIN1 python3 bench/py_echo_server.py 127.0.0.1 "$port" >/dev/null & ;;
  esac
  pid=$!
  i=0
  until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port)).close()" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 100 ] || { kill $pid; echo "server $name did not start" >&2; exit 1; }
    sleep 0.05
  done
  out=$(timeout 120 $PIN0 bench/build/loadgen 127.0.0.1 "$port" "$conns" "$SECS" "$pid")
  kill $pid; wait $pid 2>/dev/null || true
  echo "$out" | sed -n 's/.*rt_per_s=\([0-9.]*\) cpu_us_per_rt=\([0-9.]*\).*/\1 \2/p'
}


printf '%-6s %-14s %14s %16s\n' conns server "round trips/s" "CPU us/rt"
for conns in 1 100; do
  for name in lua py; do
    : > bench/build/$name.$conns
    r=0
    while [ $r -lt "$RUNS" ]; do measure $name $conns >> bench/build/$name.$conns; r=$((r + 1)); done
  done
  for name in lua py; do
    rt=$(cut -d' ' -f1 bench/build/$name.$conns | median)
    cpu=$(cut -d' ' -f2 bench/build/$name.$conns | median)
    eval "cpu_$name=$cpu"
    label=$([ $name = lua ] && echo lua-asyncore || echo py-asyncore)
    printf '%-6s %-14s %14.0f %16.2f\n' "$conns" "$label" "$rt" "$cpu"
  done
  printf '%-6s %-14s %31s\n' "$conns" "ratio" "$(awk "BEGIN {printf \"%.2f\", $cpu_lua / $cpu_py}")"
done
echo "(median of $RUNS runs of ${SECS}s; ratio = lua-asyncore CPU per round trip / Python asyncore's)"
