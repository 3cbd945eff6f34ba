-- The RFC 868 time server of the asyncore guides: each client gets the time
-- as 4 bytes (seconds since 1900-01-01, big-endian), then the connection closes.
-- usage: lua5.4 examples/time_server.lua [host] [port]
-- (default 127.0.0.1 3737; the standard port, 37, needs root)
local asyncore = require "asyncore"

local host, port = arg[1] or "127.0.0.1", tonumber(arg[2] or 3737)
local EPOCH_1900 = 2208988800   -- seconds from 1900-01-01 to 1970-01-01

local TimeChannel = asyncore.dispatcher:extend()

function TimeChannel:handle_write()
  self:send(string.pack(">I4", (os.time() + EPOCH_1900) % 2 ^ 32))
  self:close()
end

function TimeChannel:handle_read() self:recv(512) end   -- ignore what the client says

local TimeServer = asyncore.dispatcher:extend()

function TimeServer:init(h, p)
  asyncore.dispatcher.init(self)
  self:create_socket()
  self:set_reuse_addr()
  self:bind(h, p)
  self:listen(5)
  print(("time server on %s:%d"):format(h, self.socket:getsockname()[2]))
  io.stdout:flush()
end

function TimeServer:handle_accepted(sock, addr)
  print(("time for %s:%d"):format(addr[1], addr[2]))
  io.stdout:flush()
  TimeChannel(sock)
end

TimeServer(host, port)
asyncore.loop()
