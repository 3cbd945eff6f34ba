-- A multi-user chat server: a line protocol over async_chat. Every line a
-- user sends goes to everybody else as "nick: line".
--   /nick NAME   change your name        /who   list who is here
--   /quit        leave
-- TERM and INT stop it gracefully (queued lines are still sent).
-- usage: lua5.4 examples/chat_server.lua [host] [port]   (default 127.0.0.1 8023)
-- try it with: nc 127.0.0.1 8023   (or examples/line_client.lua)
local asyncore = require "asyncore"
local asynchat = require "asynchat"

local host, port = arg[1] or "127.0.0.1", tonumber(arg[2] or 8023)

local ChatServer = asyncore.dispatcher:extend()
local ChatSession = asynchat.async_chat:extend()

function ChatSession:init(sock, server, addr)
  asynchat.async_chat.init(self, sock)
  self.server = server
  self.nick = ("guest%d"):format(addr[2] or 0)
  self:set_terminator("\n")
  server.sessions[self] = true
  self:push("* welcome, " .. self.nick .. " (/nick NAME, /who, /quit)\r\n")
  server:broadcast("* " .. self.nick .. " joined", self)
end

function ChatSession:found_terminator()
  local line = self:get_data():gsub("\r$", "")
  local cmd, rest = line:match("^/(%a+)%s*(.-)%s*$")
  if cmd == "nick" and rest ~= "" then
    self.server:broadcast(("* %s is now %s"):format(self.nick, rest), self)
    self.nick = rest
    self:push("* you are " .. rest .. "\r\n")
  elseif cmd == "who" then
    local names = {}
    for s in pairs(self.server.sessions) do names[#names + 1] = s.nick end
    table.sort(names)
    self:push("* here: " .. table.concat(names, ", ") .. "\r\n")
  elseif cmd == "quit" then
    self:push("* bye\r\n")
    self:close_when_done()
  elseif line ~= "" then
    self.server:broadcast(self.nick .. ": " .. line, self)
  end
end

function ChatSession:handle_close()
  if self.server.sessions[self] then
    self.server.sessions[self] = nil
    self.server:broadcast("* " .. self.nick .. " left")
  end
  self:close()
end

function ChatServer:init(h, p)
  asyncore.dispatcher.init(self)
  self.sessions = {}
  self:create_socket()
  self:set_reuse_addr()
  self:bind(h, p)
  self:listen(64)
  print(("chat server on %s:%d"):format(h, self.socket:getsockname()[2]))
  io.stdout:flush()
end

function ChatServer:handle_accepted(sock, addr)
  ChatSession(sock, self, addr)
end

-- send a line to every session but `except`
function ChatServer:broadcast(line, except)
  for s in pairs(self.sessions) do
    if s ~= except then s:push(line .. "\r\n") end
  end
end

ChatServer(host, port)
-- TERM, INT: the listener closes, each session's queued lines are still sent
for _, name in ipairs { "TERM", "INT" } do
  asyncore.on_signal(name, function() asyncore.shutdown(5) end)
end
asyncore.loop()
