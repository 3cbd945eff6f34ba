-- Run against an installed tree (LUA_PATH/LUA_CPATH set by the caller): loads
-- the modules from there, serves one echo connection, prints where they came from.
local asyncore = require "asyncore"
print("asyncore from " .. package.searchpath("asyncore", package.path))
print("core from " .. package.searchpath("asyncore.core", package.cpath))
local Echo = asyncore.dispatcher_with_send:extend()
function Echo:handle_read() local d = self:recv(100) if #d > 0 then self:send(d) end end
local S = asyncore.dispatcher:extend()
function S:handle_accepted(sock) Echo(sock) end
local s = S()
s:create_socket()
s:bind { "127.0.0.1", 0 }
s:listen(1)
local C = asyncore.dispatcher_with_send:extend()
function C:handle_connect() end
function C:handle_read()
  print("served " .. self:recv(100))
  error(asyncore.ExitNow)
end
local c = C()
c:create_socket()
c:connect(s.socket:getsockname())
c:send("installed rock")
pcall(asyncore.loop, { timeout = 1, count = 100 })
s:close()

-- the modules loaded on first use (streams) come from the installed tree too
local srv = asyncore.serve("127.0.0.1", 0, function(st) st:write(st:read(), " back\n") end)
local t = asyncore.spawn(function()
  local st = assert(asyncore.open_stream("127.0.0.1", srv.port))
  st:write("streamed\n")
  local line = st:read()
  st:close()
  return line
end)
print("streams: " .. tostring(select(2, t:join(10))))
print("streams from " .. package.searchpath("asyncore.streams", package.path))
srv:close()
