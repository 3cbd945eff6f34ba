-- A TLS client to copy: connect to host:port, check the server's certificate
-- (the system's trust store, or --cafile) and its name, send a request, print
-- what the connection says about itself and everything the server answers.
-- usage: lua5.4 examples/tls_client.lua [--cafile FILE] host port [request]
--        (the request defaults to "GET / HTTP/1.0" with a Host header)
-- try:   lua5.4 examples/tls_client.lua example.org 443
local asyncore = require "asyncore"

local cafile
if arg[1] == "--cafile" then
  cafile = arg[2]
  table.remove(arg, 1)
  table.remove(arg, 1)
end
local host, port = arg[1], tonumber(arg[2])
if not host or not port then
  io.stderr:write("usage: lua5.4 examples/tls_client.lua [--cafile FILE] host port [request]\n")
  os.exit(2)
end
local request = arg[3] and arg[3] .. "\r\n" or ("GET / HTTP/1.0\r\nHost: %s\r\n\r\n"):format(host)

-- verify = true is the default for a client context: chain and host name
local ctx = asyncore.tls_context { cafile = cafile }

local Client = asyncore.dispatcher_with_send:extend()
local ok = false

function Client:init()
  asyncore.dispatcher_with_send.init(self)
  self:create_socket()
  self:connect(host, port)   -- the name to verify (and send as SNI) is `host`
  self:start_tls(ctx)        -- the handshake starts once the TCP connection is made
  self:send(request)         -- queued, and sent encrypted after the handshake
end

function Client:handle_connect() end

function Client:handle_handshake()
  local info = self:tls_info()
  local cert = info.peer_certificate or {}
  io.stderr:write(("%s %s, certificate of %s issued by %s, valid until %s\n"):format(
    info.version, info.cipher, tostring(cert.subject), tostring(cert.issuer), tostring(cert.not_after)))
end

function Client:handle_read()
  local data = self:recv(65536)
  if #data > 0 then
    ok = true
    io.stdout:write(data)
  end
end

function Client:handle_close() self:close() end

function Client:handle_error(err)
  io.stderr:write(("tls_client.lua: %s:%d: %s\n"):format(host, port, tostring(err)))
  self:close()
end

Client()
asyncore.loop { timeout = 1, count = 3000 }
os.exit(ok and 0 or 1)
