#!/bin/sh
# The demo: an echo server and a client talking over loopback, in two processes.
# usage: sh examples/demo.sh   (run by `make demo`, which sets LUA_PATH/LUA_CPATH)
LUA=${LUA:-lua5.4}
port=$($LUA -e 'local s = require("asyncore").socket(); s:bind{"127.0.0.1", 0}; print(s:getsockname()[2])')
$LUA examples/echo_server.lua 127.0.0.1 "$port" &
server=$!
trap 'kill $server 2>/dev/null' EXIT
# wait until it listens
i=0
until PORT=$port $LUA -e 'local s = require("asyncore").socket(); s:setblocking(true); s:connect{"127.0.0.1", tonumber(os.getenv("PORT"))}' 2>/dev/null; do
  i=$((i + 1)); [ $i -gt 100 ] && { echo "the server did not start" >&2; exit 1; }
  sleep 0.05
done
$LUA examples/echo_client.lua 127.0.0.1 "$port" "hello from Lua" "asyncore, done right"
