-- The RFC 868 time client of the asyncore guides: reads the 4-byte time and
-- prints it.
-- usage: lua5.4 examples/time_client.lua [host] [port]   (default 127.0.0.1 3737)
local asyncore = require "asyncore"

local host, port = arg[1] or "127.0.0.1", tonumber(arg[2] or 3737)
local EPOCH_1900 = 2208988800

local TimeClient = asyncore.dispatcher:extend()

function TimeClient:init(h, p)
  asyncore.dispatcher.init(self)
  self.data = ""
  self:create_socket()
  self:connect(h, p)
end

function TimeClient:writable() return false end

function TimeClient:handle_connect() end

function TimeClient:handle_read()
  self.data = self.data .. self:recv(8)
end

function TimeClient:handle_close()
  self:close()
  if #self.data ~= 4 then
    print(("bad answer: %d bytes"):format(#self.data))
    os.exit(1)
  end
  local t = string.unpack(">I4", self.data) - EPOCH_1900
  print(("server time: %s (%d)"):format(os.date("!%Y-%m-%d %H:%M:%S UTC", t), t))
end

TimeClient(host, port)
asyncore.loop { timeout = 1, count = 100 }
