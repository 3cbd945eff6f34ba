-- A line-based client: sends each argument as a line, prints every line it
-- receives, and quits when the server closes or after WAIT seconds of quiet.
-- With "-" as the only line, it sends what it reads on standard input.
-- --timeout SECONDS gives up a connect that takes longer (the default: 10).
-- usage: lua5.4 examples/line_client.lua [--timeout SECONDS] host port [line ...]
--        (env WAIT, default 1)
local asyncore = require "asyncore"
local asynchat = require "asynchat"

local connect_timeout = 10
if arg[1] == "--timeout" then
  connect_timeout = tonumber(arg[2])
  table.remove(arg, 1)
  table.remove(arg, 1)
end
local host, port = arg[1], tonumber(arg[2])
if not (host and port and connect_timeout and connect_timeout > 0) then
  io.stderr:write("usage: lua5.4 examples/line_client.lua [--timeout SECONDS] host port [line ...]\n")
  os.exit(2)
end
local lines = { table.unpack(arg, 3) }
local wait = tonumber(os.getenv("WAIT") or "1")

local LineClient = asynchat.async_chat:extend()

function LineClient:init(h, p)
  asynchat.async_chat.init(self)
  self:set_terminator("\n")
  self:create_socket()
  self:set_timeout("connect", connect_timeout)
  self:connect(h, p)
  self.quiet = asyncore.call_later(wait, function() self:close() end)
end

function LineClient:handle_timeout(kind)
  io.stderr:write(("line_client.lua: %s:%s: no connection after %gs\n"):format(host, port, connect_timeout))
  self.quiet:cancel()
  self:close()
end

function LineClient:handle_connect() self.reached = true end

function LineClient:found_terminator()
  print((self:get_data():gsub("\r$", "")))
  io.stdout:flush()
  if not self.reading_stdin then self.quiet:reset() end   -- something arrived: wait again
end

function LineClient:handle_close()
  self.quiet:cancel()
  self:close()
end

local client = LineClient(host, port)

if lines[1] == "-" then
  -- standard input, line by line, through a file_dispatcher
  local Stdin = asyncore.file_dispatcher:extend()
  function Stdin:writable() return false end
  function Stdin:handle_read()
    local data = self:recv(4096)
    if #data > 0 then client:push(data) end
  end
  function Stdin:handle_close()
    self:close()
    client.reading_stdin = false
    client.quiet:reset()   -- stdin is done: quit once the server is quiet
  end
  client.reading_stdin = true
  client.quiet:cancel()
  Stdin(io.stdin)
else
  for _, line in ipairs(lines) do client:push(line .. "\r\n") end
end

asyncore.loop()
if not client.reached then os.exit(1) end   -- the connect failed (logged by handle_error)
