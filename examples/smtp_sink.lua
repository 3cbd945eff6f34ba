-- An SMTP sink: accepts mail (from Python's smtplib, say) and writes each
-- message to a file in a directory, with its envelope as headers.
-- With --tls it offers STARTTLS (RFC 3207): the client says STARTTLS, gets
-- "220", and the conversation goes on over TLS on the same connection.
-- usage: lua5.4 examples/smtp_sink.lua [--tls CERTFILE KEYFILE] [host] [port] [directory]
--        (default 127.0.0.1 8025 and ./mail)
local asyncore = require "asyncore"
local asynchat = require "asynchat"

local tls
if arg[1] == "--tls" then
  tls = asyncore.tls_context { mode = "server", certfile = arg[2], keyfile = arg[3] }
  for _ = 1, 3 do table.remove(arg, 1) end
end
local host, port, dir = arg[1] or "127.0.0.1", tonumber(arg[2] or 8025), arg[3] or "mail"
os.execute(("mkdir -p '%s'"):format(dir:gsub("'", "'\\''")))
local count = 0

local SmtpSession = asynchat.async_chat:extend()
-- RFC 5321 4.5.3.2: a server waits 5 minutes for the next command, then hangs up
SmtpSession.timeouts = { idle = 300, handshake = 30 }
function SmtpSession:handle_timeout(kind)
  self:push("421 timeout, closing\r\n")
  self:close_when_done()
end

function SmtpSession:init(sock)
  asynchat.async_chat.init(self, sock)
  self:set_terminator("\r\n")
  self:reset()
  self:push("220 lua-asyncore SMTP sink ready\r\n")
end

function SmtpSession:reset()
  self.from, self.to, self.in_data = nil, {}, false
end

function SmtpSession:reply(line) self:push(line .. "\r\n") end

function SmtpSession:found_terminator()
  local data = self:get_data()
  if self.in_data then
    return self:deliver(data)
  end
  local verb, rest = data:match("^(%a+)%s*(.*)$")
  verb = verb and verb:upper()
  if verb == "EHLO" and tls and not self:tls_info() then
    self:reply("250-hello " .. rest)
    self:reply("250 STARTTLS")
  elseif verb == "HELO" or verb == "EHLO" then
    self:reply("250 hello " .. rest)
  elseif verb == "STARTTLS" and tls and not self.tls_started then
    self.tls_started = true
    self:reply("220 ready to start TLS")   -- in the clear, then the handshake
    self:start_tls(tls)
    self:reset()                           -- the client starts over with EHLO
  elseif verb == "STARTTLS" then
    self:reply(tls and "503 TLS is already on" or "502 command not implemented")
  elseif verb == "MAIL" then
    self.from = rest:match("<(.-)>") or rest
    self:reply("250 ok")
  elseif verb == "RCPT" then
    if not self.from then return self:reply("503 need MAIL first") end
    self.to[#self.to + 1] = rest:match("<(.-)>") or rest
    self:reply("250 ok")
  elseif verb == "DATA" then
    if #self.to == 0 then return self:reply("503 need RCPT first") end
    self.in_data = true
    self:set_terminator("\r\n.\r\n")
    self:reply("354 end data with <CR><LF>.<CR><LF>")
  elseif verb == "RSET" then
    self:reset()
    self:reply("250 ok")
  elseif verb == "NOOP" then
    self:reply("250 ok")
  elseif verb == "QUIT" then
    self:reply("221 bye")
    self:close_when_done()
  else
    self:reply("502 command not implemented")
  end
end

function SmtpSession:deliver(body)
  body = body:gsub("\r\n%.%.", "\r\n."):gsub("^%.%.", ".")   -- undo dot-stuffing
  count = count + 1
  local name = ("%s/%d-%d.eml"):format(dir, os.time(), count)
  local f = assert(io.open(name, "wb"))
  f:write("X-Envelope-From: ", self.from, "\r\n")
  f:write("X-Envelope-To: ", table.concat(self.to, ", "), "\r\n")
  f:write(body, "\r\n")
  f:close()
  print("stored " .. name)
  io.stdout:flush()
  self:set_terminator("\r\n")
  self:reset()
  self:reply("250 ok: stored")
end

local SmtpServer = asyncore.dispatcher:extend()

function SmtpServer:init(h, p)
  asyncore.dispatcher.init(self)
  self:create_socket()
  self:set_reuse_addr()
  self:bind(h, p)
  self:listen(16)
  print(("smtp sink on %s:%d, writing to %s/"):format(h, self.socket:getsockname()[2], dir))
  io.stdout:flush()
end

function SmtpServer:handle_accepted(sock) SmtpSession(sock) end

SmtpServer(host, port)
asyncore.loop()
