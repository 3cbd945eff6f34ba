-- lua-asyncore's loop hosted inside luv's (Debian: lua-luv): luv watches the
-- map's backend_fd() and runs one pass (asyncore.step(0)) when it is
-- readable; a luv timer runs a pass when next_timeout() says the library has
-- work of its own (a timer, a timeout). Here an asyncore echo server and an
-- asyncore timer run next to a luv timer, all on luv's uv.run().
-- usage: lua5.4 examples/embed_in_luv.lua [host] [port]   (default 127.0.0.1 8080)
local uv = require "luv"
local asyncore = require "asyncore"

local host, port = arg[1] or "127.0.0.1", tonumber(arg[2] or 8080)

local Echo = asyncore.dispatcher_with_send:extend()
function Echo:handle_read()
  local data = self:recv(65536)
  if data and data ~= "" then self:send(data) end
end

local server = asyncore.dispatcher()
server:create_socket("inet")
server:set_reuse_addr()
server:bind { host, port }
server:listen(128)
function server:handle_accepted(sock) Echo(sock) end

asyncore.call_later(0.2, function() io.stderr:write("an asyncore timer fired inside luv's loop\n") end)
uv.new_timer():start(300, 0, function() io.stderr:write("a luv timer fired\n") end)

local fd = asyncore.backend_fd()
if not fd then error("backend_fd: this map's backend has no descriptor (select or poll)") end

local poll, timer = uv.new_poll(fd), uv.new_timer()
local function pass()
  asyncore.step(0)
  timer:stop()
  local t = asyncore.next_timeout()       -- nil: nothing scheduled; the poll handle covers sockets
  if t then timer:start(math.ceil(t * 1000), 0, pass) end
end
poll:start("r", pass)
pass()

io.stderr:write(("echo server (asyncore inside luv) listening on %s:%d\n")
  :format(host, server.socket:getsockname()[2]))
uv.run()
