-- luv's loop (Debian: lua-luv) hosted inside lua-asyncore's: a
-- file_dispatcher watches luv's backend_fd() and runs luv without blocking
-- (uv.run("nowait")) when it is readable; an asyncore timer does so when
-- uv.backend_timeout() says luv has a timer due. Here a luv TCP echo server
-- runs next to an asyncore timer, all on asyncore.loop().
-- usage: lua5.4 examples/luv_in_asyncore.lua [host] [port]   (default 127.0.0.1 8080)
local uv = require "luv"
local asyncore = require "asyncore"

local host, port = arg[1] or "127.0.0.1", tonumber(arg[2] or 8080)

local server = uv.new_tcp()
assert(server:bind(host, port))
assert(server:listen(128, function(err)
  assert(not err, err)
  local client = uv.new_tcp()
  server:accept(client)
  client:read_start(function(rerr, data)
    if rerr or not data then client:close() return end
    client:write(data)
  end)
end))
uv.new_timer():start(200, 0, function() io.stderr:write("a luv timer fired inside asyncore's loop\n") end)
asyncore.call_later(0.3, function() io.stderr:write("an asyncore timer fired\n") end)

-- luv's descriptor as a channel of ours: readable when luv has events
local Luv = asyncore.file_dispatcher:extend()
function Luv:writable() return false end
local timer
local function run_luv()
  uv.run("nowait")
  if timer then timer:cancel() end
  local ms = uv.backend_timeout()          -- -1: no luv timer pending
  timer = ms >= 0 and asyncore.call_later(ms / 1000, run_luv) or nil
end
function Luv:handle_read() run_luv() end
Luv(uv.backend_fd())
run_luv()

io.stderr:write(("echo server (luv inside asyncore) listening on %s:%d\n")
  :format(host, server:getsockname().port))
asyncore.loop()
