-- An HTTP/1.1 server on async_chat: keep-alive, serves a directory, answers
-- "Hello, world!" on GET /hello and echoes the body of POST /echo.
-- The request line and headers are read with a string terminator ("\r\n\r\n"),
-- a body with an integer terminator (its Content-Length), and files are sent
-- through a producer, a chunk at a time. GET /work?ms=N does N units of Lua
-- work (about a millisecond each) before it answers: a CPU-bound route.
-- TERM and INT stop it gracefully (responses under way are finished; new
-- connects are refused at once); --workers N serves on N processes, sharing
-- one listening socket, or with --reuseport each its own (SO_REUSEPORT).
-- usage: lua5.4 examples/http_server.lua [--tls CERTFILE KEYFILE] [--idle SECONDS] [--workers N
--        [--reuseport]] [host] [port] [directory]
--        (default 127.0.0.1 8080 and the current directory; with --tls, HTTPS)
-- try: curl -v http://127.0.0.1:8080/hello
--      curl --cacert ca.pem https://localhost:8443/hello   (with --tls)
local asyncore = require "asyncore"
local asynchat = require "asynchat"

local find, sub, lower = string.find, string.sub, string.lower

local args, tls, idle, workers, reuseport = {}, nil, 30, nil, false
do
  local i = 1
  while i <= #arg do
    if arg[i] == "--tls" then
      if not arg[i + 2] then
        io.stderr:write("usage: http_server.lua [--tls CERTFILE KEYFILE] [host] [port] [directory]\n")
        os.exit(2)
      end
      local ok, ctx = pcall(asyncore.tls_context, { mode = "server", certfile = arg[i + 1],
        keyfile = arg[i + 2], alpn = { "http/1.1" } })
      if not ok then
        io.stderr:write("http_server.lua: ", tostring(ctx), "\n")
        os.exit(2)
      end
      tls = ctx
      i = i + 3
    elseif arg[i] == "--reuseport" then
      reuseport = true
      i = i + 1
    elseif arg[i] == "--workers" then
      workers = math.tointeger(tonumber(arg[i + 1]))
      if not workers or workers < 1 then
        io.stderr:write("http_server.lua: --workers takes a number of processes >= 1\n")
        os.exit(2)
      end
      i = i + 2
    elseif arg[i] == "--idle" then
      idle = tonumber(arg[i + 1])
      if not idle or idle <= 0 then
        io.stderr:write("http_server.lua: --idle takes a number of seconds\n")
        os.exit(2)
      end
      i = i + 2
    else
      args[#args + 1] = arg[i]
      i = i + 1
    end
  end
end
local host, port, root = args[1] or "127.0.0.1", tonumber(args[2] or 8080), args[3] or "."

local HELLO = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, world!"
local REASONS = { [200] = "OK", [400] = "Bad Request", [404] = "Not Found", [405] = "Method Not Allowed",
  [411] = "Length Required", [413] = "Payload Too Large", [417] = "Expectation Failed", [501] = "Not Implemented" }
local TYPES = { html = "text/html", txt = "text/plain", lua = "text/plain", md = "text/plain",
  json = "application/json", css = "text/css", js = "text/javascript", png = "image/png" }
local MAX_BODY = 16 * 1024 * 1024

-- GET /work?ms=N: a fixed amount of Lua work per unit (about 1 ms here)
local function work(units)
  local x = 0
  for i = 1, units * 100000 do x = (x + i) % 1000003 end
  return ("worked %d units: %d\n"):format(units, x)
end

-- What is served must stay inside the root, symbolic links included: the root
-- and each file are compared as canonical paths.
local ROOT = asyncore.realpath(root)
if not ROOT then
  io.stderr:write(("http_server.lua: no such directory: %s\n"):format(root))
  os.exit(2)
end

-- A producer that reads a file in 64 KiB chunks and closes it at the end (or
-- when the connection closes first: see HttpChannel:close). While it sends,
-- its channel reads no further request (see HttpChannel:found_terminator):
-- at the end it lets it read again.
local FileProducer = asyncore.Object:extend()
function FileProducer:init(f, chan) self.f, self.chan = f, chan end
function FileProducer:more()
  local chunk = self.f and self.f:read(65536)
  if not chunk then
    self:close()
    if self.chan then self.chan:resume_reading() end
    return ""
  end
  return chunk
end
function FileProducer:close()
  if self.f then self.f:close() self.f = nil end
end

local HttpChannel = asynchat.async_chat:extend()
-- a client that stops sending (or reading) for 30 s (--idle), or never
-- finishes its TLS handshake, is dropped: a slowloris client cannot hold a
-- channel for ever
HttpChannel.timeouts = { idle = idle, handshake = 10 }
function HttpChannel:handle_timeout(kind) self:close() end

function HttpChannel:init(sock)
  asynchat.async_chat.init(self, sock)
  self.body_wanted = false   -- fields set here are found on the instance, not the classes
  self.close_after = false
  self.head_only = false
  self.producer = false
  self:set_terminator("\r\n\r\n")
  if tls then self:start_tls(tls) end
end

-- A client that failed the TLS handshake (or spoke plain HTTP to HTTPS) is
-- one line in the log, not a traceback.
function HttpChannel:handle_error(err, tb)
  if asyncore.is_error(err) and err.op == "handshake" then
    io.stderr:write(("http_server.lua: %s: %s\n"):format(tostring(self.addr and self.addr[1]), tostring(err)))
    return self:close()
  end
  return asynchat.async_chat.handle_error(self, err, tb)
end

-- An aborted download must not leave its file open until a garbage collection.
function HttpChannel:close()
  if self.producer then self.producer:close() self.producer = false end
  asynchat.async_chat.close(self)
end

function HttpChannel:respond(status, body, ctype, extra)
  local head = ("HTTP/1.1 %d %s\r\nContent-Length: %d\r\nContent-Type: %s\r\n%s%s\r\n")
    :format(status, REASONS[status], #body, ctype or "text/plain", extra or "",
      self.close_after and "Connection: close\r\n" or "")
  self:push(self.head_only and head or head .. body)    -- HEAD: never a body
  if self.close_after then self:close_when_done() end
end

-- An error that ends the connection (the request stream cannot be trusted).
function HttpChannel:fail(status, text)
  self.close_after = true
  return self:respond(status, text)
end

-- The request head as method, target, version and a table of headers with
-- lower-case names (header names are case-insensitive). nil if malformed.
local function parse_head(head)
  local method, target, version, rest = head:match("^(%u+) (%S+) HTTP/(%d%.%d)(.*)$")
  if not method then return nil end
  local headers = {}
  for name, value in rest:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
    name = lower(name)
    headers[name] = headers[name] and headers[name] .. ", " .. value or value
  end
  return method, target, version, headers
end

-- The file a target names, inside ROOT, or nil: the target must be an
-- absolute path; no segment may be "..", "." or a hidden name; the canonical
-- path (symbolic links resolved) must still lie inside the root.
local function resolve(target)
  local path = target:gsub("[?#].*", "")
  if sub(path, 1, 1) ~= "/" then return nil end
  path = path:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  if find(path, "%z") or find(path, "\\", 1, true) then return nil end
  for seg in path:gmatch("[^/]+") do
    if sub(seg, 1, 1) == "." then return nil end
  end
  if sub(path, -1) == "/" then path = path .. "index.html" end
  local real = asyncore.realpath(ROOT .. path)
  if not real or (sub(real, 1, #ROOT + 1) ~= ROOT .. "/" and real ~= ROOT) then return nil end
  return real
end

function HttpChannel:found_terminator()
  if self.body_wanted then                    -- the body of a POST
    self.body_wanted = false
    self:set_terminator("\r\n\r\n")
    return self:respond(200, self:get_data())
  end
  local head = self:get_data()
  -- the benchmark's request, answered with two plain searches
  if find(head, "GET /hello HTTP/1.1\r\n", 1, true) == 1 and not find(head, "onnection:", 20, true) then
    return self:push(HELLO)
  end
  self.head_only = false
  local method, target, version, headers = parse_head(head)
  if not method or sub(target, 1, 1) ~= "/" then return self:fail(400, "bad request\n") end
  self.head_only = method == "HEAD"
  local connection = headers.connection and lower(headers.connection)
  if version == "1.0" then
    self.close_after = connection ~= "keep-alive"
  else
    self.close_after = connection == "close"
  end
  local te = headers["transfer-encoding"]
  if te and lower(te) ~= "identity" then     -- chunked request bodies: not handled here
    return self:fail(501, "transfer-encoding not supported\n")
  end
  local length = headers["content-length"]
  if length then
    length = find(length, "^%d+$") and math.tointeger(tonumber(length))
    if not length then return self:fail(400, "bad content-length\n") end
  end
  if method == "POST" then
    if target ~= "/echo" then
      if length and length > 0 then return self:fail(404, "not found\n") end
      return self:respond(404, "not found\n")
    end
    if not length then return self:fail(411, "content-length required\n") end
    if length > MAX_BODY then return self:fail(413, "body too large\n") end
    local expect = headers.expect and lower(headers.expect)
    if expect and expect ~= "100-continue" then return self:fail(417, "expectation failed\n") end
    if length == 0 then return self:respond(200, "") end
    if expect then self:push("HTTP/1.1 100 Continue\r\n\r\n") end
    self.body_wanted = true
    self:set_terminator(length)               -- the body: a byte count
    return
  end
  if length and length > 0 then               -- a body we do not read: framing is lost
    return self:fail(400, "unexpected body\n")
  end
  if method ~= "GET" and method ~= "HEAD" then return self:respond(405, "method not allowed\n") end
  if target == "/hello" then return self:respond(200, "Hello, world!") end
  local units = target:match("^/work%?ms=(%d+)$")
  if units then return self:respond(200, work(tonumber(units))) end
  local file = resolve(target)
  local f = file and io.open(file, "rb")
  local size
  if f then
    local _, dir_error = f:read(0)            -- a directory opens, but does not read
    if not dir_error then size = f:seek("end") end
  end
  if not size then
    if f then f:close() end
    return self:respond(404, "not found\n")
  end
  f:seek("set")
  local ctype = TYPES[file:match("%.(%w+)$") or ""] or "application/octet-stream"
  self:push(("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: %s\r\n%s\r\n")
    :format(size, ctype, self.close_after and "Connection: close\r\n" or ""))
  if method == "GET" then
    -- a file goes out as the client takes it, so it does not count against
    -- write_high_water: pipelined requests wait (unread) until it is sent,
    -- and a client that never reads holds one open file, not one per request
    self.producer = FileProducer(f, self)
    self:push_with_producer(self.producer)
    self:pause_reading()
  else
    f:close()
  end
  if self.close_after then self:close_when_done() end
end

local HttpServer = asyncore.dispatcher:extend()

function HttpServer:init(h, p)
  asyncore.dispatcher.init(self)
  self:create_socket()
  self:set_reuse_addr()
  if reuseport then self.socket:setsockopt("reuseport", true) end
  self:bind(h, p)
  self:listen(1024)
end

local accepted = 0
function HttpServer:handle_accepted(sock)
  accepted = accepted + 1
  HttpChannel(sock)
end

-- TERM, INT: stop taking connections, finish what is under way (10 s at most)
for _, name in ipairs { "TERM", "INT" } do
  asyncore.on_signal(name, function() asyncore.shutdown(10) end)
end

-- the listener: made before the workers (they share it), or by each (reuseport)
local server = not (workers and reuseport) and HttpServer(host, port) or nil
local me = "http server"
if workers then
  local n = asyncore.fork_workers(workers, { reuseport = reuseport })   -- the parent returns 0 at the end
  if n == 0 then
    io.stderr:write("http server: all workers have exited\n")
    os.exit(0)
  end
  me = ("http server worker %d"):format(n)
  server = server or HttpServer(host, port)
end
io.stderr:write(("%s on %s://%s:%d/ serving %s\n"):format(me, tls and "https" or "http", host,
  server.socket:getsockname()[2], ROOT))
asyncore.loop()
io.stderr:write(("%s stopped (%d connections accepted)\n"):format(me, accepted))
