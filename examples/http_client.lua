-- The HTTP client of the asyncore documentation, with the redirect-following
-- consumer: GET a URL, follow redirects (across http and https), print status,
-- headers and body size. https:// is verified against the system's trust
-- store, or the CAs of --cafile; the name checked is the URL's host.
-- usage: lua5.4 examples/http_client.lua [--cafile FILE] [--timeout SECONDS] http[s]://host[:port]/path
--        (--timeout: for the connection and between bytes, default 30)
local asyncore = require "asyncore"

local cafile
local timeout = 30   -- seconds for the connection (name, connect, TLS) and between bytes
while arg[1] == "--cafile" or arg[1] == "--timeout" do
  if arg[1] == "--cafile" then cafile = arg[2] else timeout = tonumber(arg[2]) end
  table.remove(arg, 1)
  table.remove(arg, 1)
end
local tls_ctx   -- made on the first https:// URL

local function parse_url(url)
  local scheme, host, port, path = url:match("^(https?)://([^/:]+):?(%d*)(/?.*)$")
  if not host then return nil end
  return host, tonumber(port) or (scheme == "https" and 443 or 80), path ~= "" and path or "/", scheme
end

-- One GET request. The consumer gets http_header(client) once the header
-- has arrived, feed(data) for each piece of the body, and close() at the end.
local HttpClient = asyncore.dispatcher_with_send:extend()

function HttpClient:init(url, consumer)
  asyncore.dispatcher_with_send.init(self)
  local host, port, path, scheme = parse_url(url)
  if not host then error("not an http:// or https:// URL: " .. tostring(url), 2) end
  self.url, self.consumer = url, consumer
  self.header, self.data = nil, ""
  self:create_socket()
  self:set_timeout("connect", timeout)
  self:set_timeout("handshake", timeout)
  self:set_timeout("idle", timeout)
  self:connect(host, port)
  if scheme == "https" then
    tls_ctx = tls_ctx or asyncore.tls_context { cafile = cafile, alpn = { "http/1.1" } }
    self:start_tls(tls_ctx, { server_hostname = host })   -- verifies host's certificate
  end
  -- queued now, sent (encrypted, for https) once the connection is ready
  self:send(("GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: lua-asyncore\r\n\r\n"):format(path, host))
end

function HttpClient:handle_connect() end

function HttpClient:handle_read()
  local data = self:recv(8192)
  if self.header then
    if #data > 0 then self.consumer:feed(data) end
    return
  end
  self.data = self.data .. data
  local head_end = self.data:find("\r\n\r\n", 1, true)
  if not head_end then return end
  local head = self.data:sub(1, head_end - 1)
  local body = self.data:sub(head_end + 4)
  self.data = nil
  local lines = {}
  for line in head:gmatch("[^\r\n]+") do lines[#lines + 1] = line end
  self.status_line = table.remove(lines, 1)
  self.status = tonumber(self.status_line:match("^HTTP/%d%.%d (%d%d%d)"))
  self.header = {}
  self.header_lines = lines
  for _, line in ipairs(lines) do
    local k, v = line:match("^([^:]+):%s*(.*)$")
    if k then self.header[k:lower()] = v end
  end
  self.consumer:http_header(self)
  if #body > 0 then self.consumer:feed(body) end
end

function HttpClient:handle_close()
  self:close()
  self.consumer:close()
end

function HttpClient:handle_timeout(kind)
  print(("error: %s: %s timeout (%gs)"):format(self.url, kind, timeout))
  self.failed = true
  self:close()
  self.consumer:close()
end

function HttpClient:handle_error(err, tb)
  local a = self.addr
  print(("error: %s:%s: %s"):format(a and a[1], a and a[2], tostring(err)))
  self.failed = true
  self:close()
  self.consumer:close()
end

-- Prints what arrived.
local PrintingConsumer = asyncore.Object:extend()

function PrintingConsumer:init() self.size = 0 end

function PrintingConsumer:http_header(client)
  self.answered = true
  print(client.status_line)
  for _, line in ipairs(client.header_lines) do print(line) end
end

function PrintingConsumer:feed(data) self.size = self.size + #data end

function PrintingConsumer:close()
  print(("body: %d bytes"):format(self.size))
  self.done = true
end

-- Passes everything to the consumer it wraps, except a redirect, which it
-- follows with a new request (at most `hops` times).
local RedirectingConsumer = asyncore.Object:extend()

function RedirectingConsumer:init(consumer, hops)
  self.consumer, self.hops = consumer, hops or 5
end

function RedirectingConsumer:http_header(client)
  local status, location = client.status, client.header.location
  if status and status >= 300 and status < 400 and location and self.hops > 0 then
    if not location:match("^https?://") then   -- a relative reference
      local host, port, _, scheme = parse_url(client.url)
      location = ("%s://%s:%d%s"):format(scheme, host, port, location)
    end
    print(("%s -> redirected to %s"):format(client.status_line, location))
    self.hops = self.hops - 1
    client.consumer = { feed = function() end, close = function() end }
    client:close()
    HttpClient(location, self)
    return
  end
  self.consumer:http_header(client)
end

function RedirectingConsumer:feed(data) self.consumer:feed(data) end

function RedirectingConsumer:close() self.consumer:close() end

local url = arg[1]
if not url or not parse_url(url) or not timeout or timeout <= 0 then
  io.stderr:write("usage: lua5.4 examples/http_client.lua [--cafile FILE] [--timeout SECONDS] http[s]://host[:port]/path\n")
  os.exit(2)
end
local printer = PrintingConsumer()
HttpClient(url, RedirectingConsumer(printer))
asyncore.loop { timeout = 1, count = 3000 }
os.exit(printer.done and printer.answered and 0 or 1)   -- no answer (refused, reset): 1
