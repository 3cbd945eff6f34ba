#!/bin/sh
# Run the busted specs under Lua 5.4 and end with the line CI reads:
#   N passed, N failed          (", N skipped" added when busted skipped any)
# usage: sh spec/run.sh LUA BUSTED [busted args...]
# LUA may be a command with arguments (e.g. "valgrind -q lua5.4").
# The whole run is bounded (AC_SPEC_TIMEOUT seconds, default 900): a hang fails.
LUA=${1:-lua5.4}
BUSTED=${2:-/usr/bin/busted}
shift 2 2>/dev/null
# child processes (examples, peers) find the modules of this tree
here=$(pwd)
export LUA_PATH="$here/lua/?.lua;$here/spec/?.lua;;"
export LUA_CPATH="$here/${AC_CORE_DIR:+$AC_CORE_DIR/}?.so;;"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# shellcheck disable=SC2086
timeout -k 10 "${AC_SPEC_TIMEOUT:-900}" $LUA "$BUSTED" -o TAP "$@" >"$out" 2>&1
status=$?
cat "$out"
if [ -n "$AC_VGLOG" ]; then
  # valgrind wrote its reports apart (--log-file): show any non-empty one here,
  # after the specs' own output, so a CI log's tail names the error
  for f in "$AC_VGLOG"/*; do
    grep -q '^==[0-9]*==' "$f" 2>/dev/null || continue   # errors only, not --notes--
    echo "---- valgrind report $f"
    cat "$f"
  done
fi
skipped=$(grep -c '^ok [0-9]* - # SKIP' "$out")
passed=$(($(grep -c '^ok ' "$out") - skipped))
failed=$(grep -c '^not ok ' "$out")
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  # busted or the interpreter died (timeout, crash, error outside a test)
  echo "spec run ended with status $status" >&2
  failed=$((failed + 1))
fi
if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then
  echo "no test ran" >&2
  failed=1
fi
if [ "$skipped" -gt 0 ]; then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
