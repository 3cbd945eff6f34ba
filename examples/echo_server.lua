-- An echo server: sends back every byte it receives, until killed.
-- usage: lua5.4 examples/echo_server.lua [host] [port]   (default 127.0.0.1 8080)
local asyncore = require "asyncore"

local host, port = arg[1] or "127.0.0.1", tonumber(arg[2] or 8080)

local EchoHandler = asyncore.dispatcher_with_send:extend()

function EchoHandler:handle_read()
  local data = self:recv(65536)
  if #data > 0 then self:send(data) end
end

-- No handle_close: the default sends what is still queued, then closes, so a
-- client that half-closes gets every byte back; and a client that sends
-- without reading pauses our reading at write_high_water (1 MiB queued).

local EchoServer = asyncore.dispatcher:extend()

function EchoServer:init(h, p)
  asyncore.dispatcher.init(self)
  self:create_socket()
  self:set_reuse_addr()
  self:bind { h, p }
  self:listen(1024)
end

function EchoServer:handle_accepted(sock, addr)
  EchoHandler(sock)
end

local server = EchoServer(host, port)
io.stderr:write(("echo server listening on %s:%d\n"):format(host, server.socket:getsockname()[2]))
asyncore.loop()
