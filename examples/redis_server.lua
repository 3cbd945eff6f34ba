-- A Redis-protocol (RESP2) key-value server on async_chat, in a page of Lua:
-- PING, ECHO, SET, GET, DEL, INCR, EXISTS (and QUIT, CONFIG GET), as inline
-- commands ("SET k v\r\n") or multibulk arrays ("*3\r\n$3\r\nSET\r\n..."), with
-- pipelining: the answers to a batch of commands that arrived together go out
-- in one write, so redis-benchmark -P 16 runs at full speed. A RESP command's
-- length is not known from its first line, so this channel sets no terminator
-- and parses what collect_incoming_data receives (one call per read).
-- usage: lua5.4 examples/redis_server.lua [host] [port]   (default 127.0.0.1 6379)
-- try:   redis-cli -p 6379 set greeting hello && redis-cli -p 6379 get greeting
local asyncore = require "asyncore"
local asynchat = require "asynchat"

local host, port = arg[1] or "127.0.0.1", tonumber(arg[2] or 6379)
local tonumber, concat, upper, format = tonumber, table.concat, string.upper, string.format
local sub, byte, find = string.sub, string.byte, string.find

local store = {}   -- key -> string value

local function bulk(v)
  if v == nil then return "$-1\r\n" end
  return format("$%d\r\n%s\r\n", #v, v)
end

local function wrong_args(name)
  return format("-ERR wrong number of arguments for '%s' command\r\n", name:lower())
end

-- each command takes the argument list (args[1] is the command name) and
-- returns the reply
local commands = {}
function commands.PING(a)
  if #a == 1 then return "+PONG\r\n" end
  if #a == 2 then return bulk(a[2]) end
  return wrong_args("ping")
end
function commands.ECHO(a)
  if #a ~= 2 then return wrong_args("echo") end
  return bulk(a[2])
end
function commands.SET(a)
  if #a ~= 3 then return wrong_args("set") end
  store[a[2]] = a[3]
  return "+OK\r\n"
end
function commands.GET(a)
  if #a ~= 2 then return wrong_args("get") end
  return bulk(store[a[2]])
end
function commands.DEL(a)
  if #a < 2 then return wrong_args("del") end
  local n = 0
  for i = 2, #a do
    if store[a[i]] ~= nil then store[a[i]] = nil; n = n + 1 end
  end
  return format(":%d\r\n", n)
end
function commands.EXISTS(a)
  if #a < 2 then return wrong_args("exists") end
  local n = 0
  for i = 2, #a do if store[a[i]] ~= nil then n = n + 1 end end
  return format(":%d\r\n", n)
end
function commands.INCR(a)
  if #a ~= 2 then return wrong_args("incr") end
  local v = store[a[2]]
  local n = v == nil and 0 or (find(v, "^%-?%d+$") and math.tointeger(tonumber(v)))
  if not n or n == math.maxinteger then return "-ERR value is not an integer or out of range\r\n" end
  n = n + 1
  store[a[2]] = tostring(n)
  return format(":%d\r\n", n)
end
function commands.CONFIG(a)   -- redis-benchmark asks for its settings: all empty
  if #a == 3 and upper(a[2]) == "GET" then return "*2\r\n" .. bulk(a[3]) .. bulk("") end
  return "-ERR unsupported CONFIG subcommand\r\n"
end

-- One command of buf from pos: its argument list and the position after it;
-- nil when it has not all arrived yet; false and a message on a protocol error.
local function parse(buf, pos)
  local eol = find(buf, "\n", pos, true)
  if not eol then return nil end
  if byte(buf, pos) ~= 42 then                 -- not "*": an inline command
    local line = sub(buf, pos, byte(buf, eol - 1) == 13 and eol - 2 or eol - 1)
    local a, i = {}, 1
    for word in line:gmatch("%S+") do a[i] = word; i = i + 1 end
    return a, eol + 1
  end
  local n = math.tointeger(tonumber(sub(buf, pos + 1, eol - 2)))
  if not n or n > 1024 * 1024 then return false, "invalid multibulk length" end
  local a, at = {}, eol + 1
  for i = 1, n do                              -- n times "$<length>\r\n<bytes>\r\n"
    eol = find(buf, "\r\n", at, true)
    if not eol then return nil end
    local len = byte(buf, at) == 36 and math.tointeger(tonumber(sub(buf, at + 1, eol - 1)))
    if not len or len < 0 or len > 512 * 1024 * 1024 then return false, "invalid bulk length" end
    at = eol + len + 4
    if at - 1 > #buf then return nil end
    a[i] = sub(buf, eol + 2, eol + len + 1)
  end
  return a, at
end

local RespChannel = asynchat.async_chat:extend()

-- No terminator: every read goes to collect_incoming_data, which answers the
-- complete commands it holds with one push (a pipelined batch, one write) and
-- keeps a command that has not all arrived for the next read.
function RespChannel:init(sock)
  asynchat.async_chat.init(self, sock)
  self.pending = ""
  self:set_terminator(nil)
end

function RespChannel:collect_incoming_data(data)
  local buf = self.pending == "" and data or self.pending .. data
  local replies, n, pos = {}, 0, 1
  while true do
    local a, after = parse(buf, pos)
    if a == nil then break end
    if a == false then
      n = n + 1
      replies[n] = "-ERR Protocol error: " .. after .. "\r\n"
      self:push(concat(replies))
      return self:close_when_done()
    end
    pos = after
    if a[1] then
      local name = upper(a[1])
      local cmd = commands[name]
      n = n + 1
      if cmd then
        replies[n] = cmd(a)
      elseif name == "QUIT" then
        replies[n] = "+OK\r\n"
        self:push(concat(replies))
        return self:close_when_done()
      else
        replies[n] = format("-ERR unknown command '%s'\r\n", a[1])
      end
    end
  end
  if n > 0 then self:push(concat(replies)) end
  self.pending = pos > #buf and "" or sub(buf, pos)
  if #self.pending > 512 * 1024 * 1024 + 1024 then
    self:push("-ERR Protocol error: command too large\r\n")
    self:close_when_done()
  end
end

local RespServer = asyncore.dispatcher:extend()

function RespServer:init(h, p)
  asyncore.dispatcher.init(self)
  self:create_socket()
  self:set_reuse_addr()
  self:bind(h, p)
  self:listen(1024)
end

function RespServer:handle_accepted(sock)
  RespChannel(sock)
end

local server = RespServer(host, port)
io.stderr:write(("redis server on %s:%d\n"):format(host, server.socket:getsockname()[2]))
io.stderr:flush()
asyncore.loop()
