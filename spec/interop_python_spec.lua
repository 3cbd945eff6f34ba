local asyncore = require "asyncore"
local H = require "helpers"

describe("interop with Python 3.11's asyncore", function()
  after_each(function() asyncore.close_all() end)

  it("our client talks to a Python asyncore echo server", function()
    local py = H.spawn("python3 bench/py_echo_server.py 127.0.0.1 0", 30)
    local port = tonumber(py.wait_line("port (%d+)"))
    local blob = H.blob(1024 * 1024, 99)
    local C = asyncore.dispatcher_with_send:extend()
    local got = {}
    local n = 0
    function C:handle_connect() end
    function C:handle_read()
      local d = self:recv(65536)
      got[#got + 1] = d
      n = n + #d
    end
    local c = C()
    c:create_socket()
    c:connect { "127.0.0.1", port }
    c:send(blob)
    H.run_until(function() return n >= #blob end, 20)
    py.kill()
    assert.is_true(table.concat(got) == blob, "the echo differs")
  end)

  it("a Python asyncore client talks to our echo server", function()
    local Echo = asyncore.dispatcher_with_send:extend()
    function Echo:handle_read()
      local d = self:recv(65536)
      if #d > 0 then self:send(d) end
    end
    function Echo:handle_close() self:close() end
    local S = asyncore.dispatcher:extend()
    function S:handle_accepted(sock) Echo(sock) end
    local s = S()
    s:create_socket()
    s:bind { "127.0.0.1", 0 }
    s:listen(5)
    local py = H.spawn("python3 spec/peers/py_echo_client.py " .. s.socket:getsockname()[2] .. " 1000000", 30)
    local verdict = py.wait_line("(%u+ %d+)", 20)
    py.kill()
    assert.equal("OK 1000000", verdict)
  end)
end)
