-- The HTTP responder and push server of `make bench`, written with luv
-- (Debian's lua-luv), the fastest Lua event loop to compare with.
-- usage: lua5.4 luv_http_server.lua http|push HOST PORT
local uv = require "luv"

local RESPONSE = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, world!"
local PUSH = 256 * 1024 * 1024
local role, host, port = arg[1], arg[2], tonumber(arg[3])

local function http(client)
  local pending = ""
  client:read_start(function(err, data)
    if err or not data then return client:close() end
    pending = pending .. data
    local n, from = 0, 1
    while true do
      local _, last = pending:find("\r\n\r\n", from, true)
      if not last then break end
      n, from = n + 1, last + 1
    end
    if n > 0 then
      pending = pending:sub(from)
      client:write(n == 1 and RESPONSE or RESPONSE:rep(n))
    end
  end)
end

local function push(client)
  client:write(("x"):rep(65536):rep(PUSH // 65536), function() client:close() end)
end

local server = uv.new_tcp()
assert(server:bind(host, port))
assert(server:listen(1024, function(err)
  if err then return end
  local client = uv.new_tcp()
  server:accept(client)
  if role == "http" then http(client) else push(client) end
end))
uv.run()
