-- A mail client written as the dialogue it is: connect, read the greeting,
-- EHLO, read the 250 lines, MAIL FROM, RCPT TO, DATA, the message, QUIT.
-- Straight-line code on a stream: at the top level of a script the stream
-- calls run the loop themselves (inside a program with other work, put the
-- same code in asyncore.spawn). With --starttls CAFILE it upgrades the
-- connection (STARTTLS, verified against CAFILE) before sending anything.
-- usage: lua5.4 examples/mail_client.lua [--starttls CAFILE] host port from to [subject]
--        (the body is read from standard input)
local asyncore = require "asyncore"

local cafile
if arg[1] == "--starttls" then
  cafile = arg[2]
  table.remove(arg, 1)
  table.remove(arg, 1)
end
local host, port, from, to = arg[1], tonumber(arg[2]), arg[3], arg[4]
local subject = arg[5] or "a message from mail_client.lua"
if not (host and port and from and to) then
  io.stderr:write("usage: lua5.4 examples/mail_client.lua [--starttls CAFILE] host port from to [subject]\n")
  os.exit(2)
end

local function fail(...)
  io.stderr:write("mail_client.lua: ", table.concat({ ... }, " "), "\n")
  os.exit(1)
end

local s, err = asyncore.open_stream(host, port, { timeout = 30 })
if not s then fail(tostring(err)) end

-- one reply: its lines ("250-..." go on, "250 ..." ends it); the code must be `want`
local function reply(want)
  local lines = {}
  repeat
    local line, e = s:read()
    if not line then fail("connection lost:", tostring(e or "end of stream")) end
    lines[#lines + 1] = line
  until line:sub(4, 4) ~= "-"
  local code = lines[#lines]:sub(1, 3)
  if code ~= want then fail("expected", want, "got:", lines[#lines]) end
  return lines
end

local function command(line, want)
  s:write(line, "\r\n")
  return reply(want)
end

reply("220")
local ehlo = command("EHLO localhost", "250")
if cafile then
  local offered = false
  for _, l in ipairs(ehlo) do
    if l:upper():find("STARTTLS", 5, true) then offered = true end
  end
  if not offered then fail("the server does not offer STARTTLS") end
  command("STARTTLS", "220")
  local ok, e = s:start_tls(asyncore.tls_context { cafile = cafile }, { server_hostname = host })
  if not ok then fail(tostring(e)) end
  command("EHLO localhost", "250")
end
command("MAIL FROM:<" .. from .. ">", "250")
command("RCPT TO:<" .. to .. ">", "250")
command("DATA", "354")
s:write("From: <", from, ">\r\nTo: <", to, ">\r\nSubject: ", subject, "\r\n\r\n")
for line in io.stdin:lines() do
  if line:sub(1, 1) == "." then line = "." .. line end      -- dot-stuffing (RFC 5321 4.5.2)
  s:write(line, "\r\n")
end
command(".", "250")
command("QUIT", "221")
s:close()
print("sent")
