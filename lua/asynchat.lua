--- asynchat for lua-asyncore: terminator framing and producer queues.
--
-- `async_chat` extends `asyncore.dispatcher`. The framing engine and the
-- output queue are C (`asyncore.core`): received bytes are buffered and
-- searched in C, and with the stock `collect_incoming_data` Lua runs only at
-- `found_terminator`. Subclass it, call `set_terminator`, and override
-- `found_terminator` (and `collect_incoming_data` if the data should go
-- elsewhere than `get_data()`).
local asyncore = require "asyncore"
local core = require "asyncore.core"

local type, error, format, tostring, rawset = type, error, string.format, tostring, rawset

local M = {}
M._VERSION = asyncore._VERSION

local async_chat = asyncore.dispatcher:extend()
async_chat.__name = "asynchat.async_chat"
async_chat.ac_in_buffer_size = 65536
async_chat.ac_out_buffer_size = 65536
async_chat.max_in_buffer = 16 * 1024 * 1024

for name, fn in pairs(core.chat) do
  if name ~= "chat_release" then async_chat[name] = fn end   -- close() calls that one
end

--- `async_chat(sock, map)`: both optional, as for dispatcher.
function async_chat:init(sock, map)
  rawset(self, "_chat", core.chat_new())
  asyncore.dispatcher.init(self, sock, map)
end

--- Called when the terminator is matched: must be overridden.
function async_chat:found_terminator()
  error(format("%s must override found_terminator()", tostring(getmetatable(self).__name)), 2)
end

--- The peer finished sending (only with allow_half_open): what is queued is
-- sent, then the channel closes.
function async_chat:handle_read_eof()
  self:close_when_done()
end

--- asyncore.shutdown(): what is queued (producers too) is still sent, then it closes.
function async_chat:handle_shutdown()
  self:close_when_done()
end

--- More than max_in_buffer bytes arrived without a terminator: log, then
-- end like every other path that ends a connection, in handle_close().
function async_chat:handle_overflow()
  self:log_info(format("more than %d bytes buffered without a terminator; closing %s",
    self.max_in_buffer, tostring(self)), "error")
  self:handle_close()
end

M.async_chat = async_chat
M.AsyncChat = async_chat

--- A producer that yields `data` in pieces of `buffer_size` (default 512) bytes.
local simple_producer = asyncore.Object:extend()
simple_producer.__name = "asynchat.simple_producer"

function simple_producer:init(data, buffer_size)
  if type(data) ~= "string" then
    error("bad argument #1 to 'simple_producer' (string expected, got " .. type(data) .. ")", 3)
  end
  if buffer_size ~= nil and (math.type(buffer_size) ~= "integer" or buffer_size < 1) then
    error("bad argument #2 to 'simple_producer' (positive integer expected)", 3)
  end
  self.data = data
  self.pos = 1
  self.buffer_size = buffer_size or 512
end

function simple_producer:more()
  local pos = self.pos
  if pos > #self.data then return "" end
  local chunk = self.data:sub(pos, pos + self.buffer_size - 1)
  self.pos = pos + #chunk
  return chunk
end

M.simple_producer = simple_producer

return M
