# Shared by bench/run.sh and bench/http.sh (sourced from the project root):
# builds the load client, points Lua at this tree, and defines the helpers.
mkdir -p bench/build
[ bench/build/loadgen -nt bench/loadgen.c ] ||
  gcc -O2 -Wall -Wextra -Werror -o bench/build/loadgen bench/loadgen.c
export LUA_PATH="$PWD/lua/?.lua;;" LUA_CPATH="$PWD/?.so;;"
# servers on CPU 1, load clients on CPU 0 (when there are two CPUs and taskset)
PIN1="" PIN0=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then PIN1="taskset -c 1" PIN0="taskset -c 0"; fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait until something listens on PORT (without connecting); kill PID if not
wait_listen() {  # PORT PID NAME
  i=0
  until ss -ltnH "sport = :$1" 2>/dev/null | grep -q LISTEN; do
    i=$((i + 1)); [ $i -lt 200 ] || { kill "$2"; echo "$3 did not start" >&2; return 1; }
    sleep 0.05
  done
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
