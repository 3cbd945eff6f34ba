-- A server with nothing to do: a listener and an idle loop on the backend
-- given as arg[1]. Prints "ready" once it waits; Ctrl-C (SIGINT) must end it.
local asyncore = require "asyncore"
local server = asyncore.dispatcher()
server:create_socket()
server:bind { "127.0.0.1", 0 }
server:listen(5)
local stat = io.open("/proc/self/stat")
io.stdout:write("ready pid ", stat:read("n"), "\n")
stat:close()
io.stdout:flush()
asyncore.loop { backend = arg[1], timeout = tonumber(arg[2]) or 30 }
