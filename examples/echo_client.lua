-- An echo client: sends each message, prints what comes back, then quits.
-- usage: lua5.4 examples/echo_client.lua [host] [port] [message ...]
local asyncore = require "asyncore"

local host, port = arg[1] or "127.0.0.1", tonumber(arg[2] or 8080)
local messages = { table.unpack(arg, 3) }
if #messages == 0 then messages = { "hello", "asyncore", "in Lua" } end

local EchoClient = asyncore.dispatcher_with_send:extend()

function EchoClient:init(h, p, msgs)
  asyncore.dispatcher_with_send.init(self)
  self.pending = msgs
  self.received = ""
  self:create_socket()
  self:connect(h, p)
end

function EchoClient:handle_connect()
  print(("connected to %s:%d"):format(self.addr[1], self.addr[2]))
  self:next_message()
end

function EchoClient:next_message()
  local msg = table.remove(self.pending, 1)
  if msg == nil then
    self.expect = nil
    return self:close()
  end
  self.expect = msg .. "\n"
  self.received = ""
  print("sent:     " .. msg)
  self:send(self.expect)
end

function EchoClient:handle_read()
  self.received = self.received .. self:recv(65536)
  if #self.received >= #self.expect then
    print("received: " .. self.received:sub(1, -2))
    self:next_message()
  end
end

function EchoClient:handle_close()
  if self.expect or #self.pending > 0 then
    self.failed = true            -- refused, reset, or closed before every answer came
    print("server closed the connection")
  end
  self:close()
end

local client = EchoClient(host, port, messages)
local ok, err = pcall(asyncore.loop, { timeout = 1, count = 500 })
if not ok then print("error: " .. tostring(err)) os.exit(1) end
if client.connected then print("gave up waiting") os.exit(1) end
if client.failed then os.exit(1) end
print("done")
