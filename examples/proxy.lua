-- A port forwarder built from two dispatchers: every connection accepted on
-- the local port gets a connection to the target, and bytes flow both ways.
--
-- Flow control keeps it small whatever the two ends do: when one side's
-- queue rises above write_high_water (1 MiB), the other side stops reading
-- until it drains, so a client that reads slowly holds the proxy at about
-- 1 MiB per direction however much the target sends. A side that finishes
-- sending (a FIN, shutdown(SHUT_WR)) has its end forwarded once what it sent
-- is delivered, and the other direction goes on: a client that half-closes
-- after its request still gets the whole answer.
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
Side.allow_half_open = true   -- the end of what a side sends is forwarded, not a close

function Side:handle_read()
  local data = self:recv(65536)
  if #data > 0 and self.peer then self.peer:send(data) end
end

-- Our queue (what the peer sent us to deliver) is high: the peer stops
-- reading until it is down to write_low_water.
function Side:handle_pause_writing()
  if self.peer then self.peer:pause_reading() end
end

function Side:handle_resume_writing()
  if self.peer then self.peer:resume_reading() end
end

-- This side finished sending: once the peer has delivered all of it, the
-- peer's end sends a FIN too. When both directions are over, each side's
-- handle_close runs (after its shutdown) and closes it.
function Side:handle_read_eof()
  local peer = self.peer
  if peer then peer:shutdown_when_done() else self:close_when_done() end
end

-- The connection ended (both directions over, a reset, a failed connect):
-- close this side; the peer still delivers what it holds, then closes.
function Side:handle_close()
  local peer = self.peer
  self.peer = nil
  self:close()
  if peer and peer.peer == self then
    peer.peer = nil
    peer:resume_reading()
    if peer:fileno() then peer:close_when_done() end
  end
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
