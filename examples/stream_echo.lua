-- An echo server written with tasks and streams: one task per connection,
-- in straight-line code. The benchmark's `stream` role runs exactly this.
-- usage: lua5.4 examples/stream_echo.lua [host] [port]   (default 127.0.0.1 8080)
local asyncore = require "asyncore"

local host, port = arg[1] or "127.0.0.1", tonumber(arg[2] or 8080)

local server = asyncore.serve(host, port, function(stream)
  while true do
    local data = stream:read_some()
    if not data then break end      -- the end of the stream (or an error)
    stream:write(data)
  end
end, { backlog = 1024 })

io.stderr:write(("stream echo server listening on %s:%d\n"):format(host, server.port))
asyncore.loop()
