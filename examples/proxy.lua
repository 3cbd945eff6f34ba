-- A port forwarder built from two dispatchers: every connection accepted on
-- the local port gets a connection to the target, and bytes flow both ways
-- until either side closes.
-- usage: lua5.4 examples/proxy.lua local_port target_host target_port [local_host]
local asyncore = require "asyncore"

local lport, thost, tport = tonumber(arg[1]), arg[2], tonumber(arg[3])
local lhost = arg[4] or "127.0.0.1"
if not (lport and thost and tport) then
  io.stderr:write("usage: lua5.4 examples/proxy.lua local_port target_host target_port [local_host]\n")
  os.exit(2)
end

-- One side of a forwarded connection: what it reads goes to its peer.
local Side = asyncore.dispatcher_with_send:extend()

function Side:handle_read()
  local data = self:recv(65536)
  if #data > 0 and self.peer then self.peer:send(data) end
end

function Side:handle_close()
  local peer = self.peer
  self.peer = nil
  self:close()
  if peer then
    peer.peer = nil
    -- let the peer finish sending what it holds, then close it
    if peer:out_buffer_size() == 0 then peer:close() else peer.closing = true end
  end
end

function Side:handle_write()
  asyncore.dispatcher_with_send.handle_write(self)
  if self.closing and self:out_buffer_size() == 0 then self:close() end
end

-- The outgoing side connects to the target.
local TargetSide = Side:extend()

function TargetSide:init(host, port)
  Side.init(self)
  self:create_socket()
  self:connect(host, port)
end

function TargetSide:handle_connect() end

local Proxy = asyncore.dispatcher:extend()

function Proxy:init(host, port)
  asyncore.dispatcher.init(self)
  self:create_socket()
  self:set_reuse_addr()
  self:bind(host, port)
  self:listen(128)
  print(("forwarding %s:%d -> %s:%d"):format(host, self.socket:getsockname()[2], thost, tport))
  io.stdout:flush()
end

function Proxy:handle_accepted(sock, addr)
  local client = Side(sock)
  local target = TargetSide(thost, tport)
  client.peer, target.peer = target, client
  print(("connection from %s:%d"):format(addr[1], addr[2]))
  io.stdout:flush()
end

Proxy(lhost, lport)
asyncore.loop()
