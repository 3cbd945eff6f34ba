local asyncore = require "asyncore"
local H = require "helpers"

local function free_port()
  local s = asyncore.socket()
  s:bind { "127.0.0.1", 0 }
  local port = s:getsockname()[2]
  s:close()
  return port
end

-- wait until something listens on port
local function wait_port(port, seconds)
  H.run_until(function()
    local s = asyncore.socket()
    s:setblocking(true)
    local ok = pcall(s.connect, s, { "127.0.0.1", port })
    s:close()
    return ok
  end, seconds or 10)
end

describe("the examples", function()
  local procs = {}
  after_each(function()
    for _, p in ipairs(procs) do p.kill() end
    procs = {}
  end)
  local function start(cmd, limit)
    local p = H.spawn(cmd, limit or 30)
    procs[#procs + 1] = p
    return p
  end

  it("echo_server.lua answers echo_client.lua", function()
    local port = free_port()
    start(H.LUA .. " examples/echo_server.lua 127.0.0.1 " .. port)
    wait_port(port)
    local out = H.capture(("timeout 20 %s examples/echo_client.lua 127.0.0.1 %d ping pong")
      :format(H.LUA, port))
    assert.matches("connected to 127.0.0.1:" .. port, out)
    assert.matches("sent:     ping\nreceived: ping\nsent:     pong\nreceived: pong\ndone", out)
  end)

  it("time_server.lua tells time_client.lua the time (RFC 868)", function()
    local port = free_port()
    local server = start(H.LUA .. " examples/time_server.lua 127.0.0.1 " .. port)
    server.wait_line("time server on")
    local out = H.capture(("timeout 20 %s examples/time_client.lua 127.0.0.1 %d"):format(H.LUA, port))
    local t = tonumber(out:match("server time: .- %((%d+)%)"))
    assert.is_number(t, out)
    assert.is_true(math.abs(t - os.time()) <= 2)
    server.wait_line("(time for 127%.0%.0%.1:%d+)")
  end)

  it("http_client.lua follows a redirect and prints status, headers and body size", function()
    local port = free_port()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir .. "/sub && printf 'hello http' > " .. dir .. "/sub/index.html")
    start(("python3 -m http.server %d --bind 127.0.0.1 --directory %s"):format(port, dir))
    wait_port(port)
    local out = H.capture(("timeout 20 %s examples/http_client.lua http://127.0.0.1:%d/sub")
      :format(H.LUA, port))
    assert.matches("301 Moved Permanently %-> redirected to http://127%.0%.0%.1:" .. port .. "/sub/", out)
    assert.matches("HTTP/1%.0 200 OK", out)
    assert.matches("Content%-Length: 10", out)
    assert.matches("body: 10 bytes", out)
    os.execute("rm -rf " .. dir)
  end)

  it("proxy.lua forwards a connection both ways", function()
    local eport, pport = free_port(), free_port()
    start(H.LUA .. " examples/echo_server.lua 127.0.0.1 " .. eport)
    wait_port(eport)
    local proxy = start(("%s examples/proxy.lua %d 127.0.0.1 %d"):format(H.LUA, pport, eport))
    proxy.wait_line("forwarding")
    local out = H.capture(("timeout 20 %s examples/echo_client.lua 127.0.0.1 %d through the proxy")
      :format(H.LUA, pport))
    assert.matches("received: through\n.*received: proxy\ndone", out)
    proxy.wait_line("(connection from 127%.0%.0%.1)")
  end)
end)
