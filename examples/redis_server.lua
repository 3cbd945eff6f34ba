-- A Redis-protocol (RESP2) key-value server on async_chat, in a page of Lua:
-- PING, ECHO, SET, GET, DEL, INCR, EXISTS (and QUIT, CONFIG GET), as inline
-- commands ("SET k v\r\n") or multibulk arrays ("*3\r\n$3\r\nSET\r\n..."), with
-- pipelining: the answers to a batch of commands that arrived together go out
-- in one write (async_chat gathers them), so redis-benchmark -P 16 runs at full
-- speed.
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

local RespChannel = asynchat.async_chat:extend()

function RespChannel:init(sock)
  asynchat.async_chat.init(self, sock)
  self.args = nil          -- the multibulk command being read
  self.missing = 0         -- its arguments still to come
  self.bulk_next = false   -- the next frame is a bulk string's body
  self:set_terminator("\n")
end

function RespChannel:execute(a)
  local name = upper(a[1])
  local cmd = commands[name]
  if cmd then return self:push(cmd(a)) end
  if name == "QUIT" then
    self:push("+OK\r\n")
    return self:close_when_done()
  end
  self:push(format("-ERR unknown command '%s'\r\n", a[1]))
end

function RespChannel:protocol_error(msg)
  self:push("-ERR Protocol error: " .. msg .. "\r\n")
  self:close_when_done()
end

function RespChannel:found_terminator()
  local data = self:get_data()
  if self.bulk_next then                       -- "<bytes>\r\n" of a bulk string
    self.bulk_next = false
    self:set_terminator("\n")
    local a = self.args
    a[#a + 1] = sub(data, 1, -3)
    self.missing = self.missing - 1
    if self.missing == 0 then
      self.args = nil
      return self:execute(a)
    end
    return
  end
  if byte(data, -1) == 13 then data = sub(data, 1, -2) end   -- "\r\n" or "\n"
  local c = byte(data, 1)
  if self.args then                            -- "$<length>" of the next argument
    local n = c == 36 and math.tointeger(tonumber(sub(data, 2)))
    if not n or n < 0 or n > 512 * 1024 * 1024 then
      return self:protocol_error("invalid bulk length")
    end
    self.bulk_next = true
    return self:set_terminator(n + 2)
  end
  if c == 42 then                              -- "*<count>": a multibulk command
    local n = math.tointeger(tonumber(sub(data, 2)))
    if not n or n > 1024 * 1024 then return self:protocol_error("invalid multibulk length") end
    if n > 0 then self.args, self.missing = {}, n end
    return
  end
  local a, i = {}, 1                           -- an inline command
  for word in data:gmatch("%S+") do a[i] = word; i = i + 1 end
  if i > 1 then self:execute(a) end
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
