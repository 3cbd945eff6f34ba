-- TLS (API.md Part 2): contexts, start_tls on every channel class, client
-- and server, verification, SNI, ALPN, mutual TLS, STARTTLS, close_notify,
-- against Python's ssl module, the openssl programs, curl, and ourselves.
local asyncore = require "asyncore"
local asynchat = require "asynchat"
local H = require "helpers"

local D = H.tls_certs()
local PY = "python3 spec/peers/py_tls.py "

-- a Python ssl server (py_tls.py server) with that certificate ("server",
-- "rogue") and options: the process and its port
local function py_server(cert, opts)
  local py = H.spawn(PY .. "server " .. D .. cert .. ".pem " .. D .. cert .. ".key" ..
    (opts and " " .. opts or ""), 30)
  return py, tonumber(py.wait_line("port (%d+)"))
end

-- wait until a py_tls.py run says OK or FAIL (or dies: "Error"); its output
local function py_done(py, seconds)
  H.run_until(function()
    local out = py.output()
    return out:match("OK") or out:match("FAIL") or out:match("Error")
  end, seconds or 30)
  return py.output()
end

local function server_ctx(extra)
  local o = { mode = "server", certfile = D .. "server.pem", keyfile = D .. "server.key" }
  for k, v in pairs(extra or {}) do o[k] = v end
  return asyncore.tls_context(o)
end

local function client_ctx(extra)
  local o = { cafile = D .. "ca.pem" }
  for k, v in pairs(extra or {}) do o[k] = v end
  return asyncore.tls_context(o)
end

local listener = H.serve

-- a line client (async_chat) that records everything that happens to it
local function line_client(port, ctx, opts, host)
  local C = asynchat.async_chat:extend()
  local ev = { lines = {}, errors = {}, closed = false, handshakes = 0, reads = 0 }
  function C:handle_connect() ev.connected = true end
  function C:handle_handshake()
    ev.handshakes = ev.handshakes + 1
    ev.info = self:tls_info()
  end
  function C:collect_incoming_data(d)
    ev.reads = ev.reads + 1
    asynchat.async_chat.collect_incoming_data(self, d)
  end
  function C:found_terminator()
    ev.lines[#ev.lines + 1] = self:get_data()
    if ev.on_line then ev.on_line(self, ev.lines[#ev.lines]) end
  end
  function C:handle_error(err) ev.errors[#ev.errors + 1] = err; self:close(); ev.closed = true end
  function C:handle_close() ev.closed = true; self:close() end
  local c = C()
  c:create_socket()
  c:set_terminator("\n")
  c:connect { host or "localhost", port }
  if ctx then c:start_tls(ctx, opts) end
  ev.chan = c
  return c, ev
end

-- an async_chat line server over TLS: echoes "lua: LINE"
local function line_server(ctx, backend_events)
  local E = asynchat.async_chat:extend()
  local ev = backend_events or { errors = {}, handshakes = 0, chans = {} }
  function E:init(sock)
    asynchat.async_chat.init(self, sock)
    self:set_terminator("\n")
    self:start_tls(ctx)
    ev.chans[#ev.chans + 1] = self
  end
  function E:handle_handshake() ev.handshakes = ev.handshakes + 1; ev.info = self:tls_info() end
  function E:found_terminator()
    local l = self:get_data()
    if l == "bye" then
      self:push("bye\n")
      self:close_when_done()
    else
      self:push("lua: " .. l .. "\n")
    end
  end
  function E:handle_error(err) ev.errors[#ev.errors + 1] = err; self:close() end
  local s, port = listener(function(sock) E(sock) end)
  return s, port, ev
end

describe("TLS", function()
  after_each(function() asyncore.close_all() end)

  describe("tls_context", function()
    it("makes client and server contexts", function()
      local c = client_ctx()
      local s = server_ctx()
      assert.matches("tls_context client verifying", tostring(c))
      assert.matches("tls_context server", tostring(s))
      assert.matches("OpenSSL", asyncore.tls_library)
      -- the system's trust store, by default
      assert.matches("client verifying", tostring(asyncore.tls_context {}))
      assert.matches("client at", tostring(asyncore.tls_context { verify = false }))
    end)

    it("names the option it rejects", function()
      local function fails(opts, pat)
        local ok, err = pcall(asyncore.tls_context, opts)
        assert.is_false(ok)
        assert.matches(pat, tostring(err))
      end
      fails({ bogus = 1 }, "unknown option 'bogus'")
      fails({ mode = "both" }, "mode:")
      fails({ mode = "server" }, "certfile: a server context needs a certificate")
      fails({ mode = "server", certfile = D .. "nope.pem" }, "certfile: cannot open '.*nope.pem'")
      fails({ mode = "server", certfile = D .. "server.pem", keyfile = D .. "other.key" },
        "keyfile: '.*other.key' does not match the certificate")
      fails({ mode = "server", certfile = D .. "make.sh", keyfile = D .. "server.key" }, "certfile: '.*make.sh': ")
      fails({ cafile = D .. "missing.pem" }, "cafile: cannot open")
      fails({ capath = D .. "ca.pem" }, "capath: '.*' is not a directory")
      fails({ verify = "yes" }, "verify: boolean expected")
      fails({ min_version = "SSLv3" }, "min_version:")
      fails({ alpn = "h2" }, "alpn: list of names expected")
      fails({ alpn = {} }, "alpn: the list is empty")
      fails({ alpn = { "" } }, "alpn: entry 1")
      fails({ ciphers = "NOPE-NOTHING" }, "ciphers: no usable cipher")
      fails({ sni = { ["a.test"] = 42 } }, "sni: 'a.test': tls_context expected")
      fails({ sni = { ["a.test"] = client_ctx() }, mode = "server", certfile = D .. "server.pem",
        keyfile = D .. "server.key" }, "sni: 'a.test': a server context expected")
      fails(42, "table expected")
    end)
  end)

  describe("start_tls arguments", function()
    it("are checked", function()
      local s, port = listener(function(sock) sock:close() end)
      local c = asyncore.dispatcher()
      c:create_socket()
      c:connect { "127.0.0.1", port }
      local ok, err = pcall(c.start_tls, c, "ctx")
      assert.is_false(ok)
      assert.matches("bad argument #1 to 'start_tls' %(tls_context expected", err)
      ok, err = pcall(c.start_tls, c, client_ctx(), { server_hostname = 5 })
      assert.matches("server_hostname", err)
      ok, err = pcall(c.start_tls, c, client_ctx(), { nope = 1 })
      assert.matches("unknown option 'nope'", err)
      -- a verifying client with no name to check refuses to start
      ok, err = pcall(c.start_tls, c, client_ctx())
      assert.is_false(ok)
      assert.matches("no?n?e? ?to check", err)
      -- a listener cannot speak TLS itself
      ok, err = pcall(s.start_tls, s, server_ctx())
      assert.matches("listens", err)
      -- twice
      c:start_tls(client_ctx { verify = false })
      ok, err = pcall(c.start_tls, c, client_ctx { verify = false })
      assert.matches("already", err)
      assert.is_nil(c:tls_info())
    end)
  end)

  for _, backend in ipairs(asyncore.backends()) do
    it("carries lines both ways between our client and our server (" .. backend .. ")", function()
      local s, port, sev = line_server(server_ctx())
      local c, ev = line_client(port, client_ctx())
      ev.on_line = function(self, l)
        if l == "lua: one" then self:push("two\n") elseif l == "lua: two" then self:push("bye\n") end
      end
      c:push("one\n")   -- queued before the handshake: sent encrypted after it
      H.run_until(function() return ev.closed end, 10, { backend = backend })
      assert.same({ "lua: one", "lua: two", "bye" }, ev.lines)
      assert.equal(1, ev.handshakes)
      assert.equal(1, sev.handshakes)
      assert.same({}, ev.errors)
      assert.equal("TLSv1.3", ev.info.version)
      assert.is_true(ev.info.verified)
      assert.equal("CN=localhost", ev.info.peer_certificate.subject)
      assert.equal("CN=Test CA", ev.info.peer_certificate.issuer)
      assert.same({ "localhost" }, ev.info.peer_certificate.dns_names)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT", ev.info.peer_certificate.not_after)
      assert.equal("localhost", sev.info.server_name)
      assert.is_nil(sev.info.peer_certificate)
      s:close()
    end)
  end

  it("talks to a Python ssl server, verified, and ends with a close_notify it accepts", function()
    local py, port = py_server("server", "--unwrap")
    local c, ev = line_client(port, client_ctx())
    ev.on_line = function(self, l)
      if l == "hello from python" then self:push("ping\n")
      elseif l == "py: ping" then self:push("bye\n")
      elseif l == "bye" then self:close(); ev.closed = true end
    end
    H.run_until(function() return ev.closed end, 10)
    assert.same({ "hello from python", "py: ping", "bye" }, ev.lines)
    assert.equal("OK unwrapped", py.wait_line("(OK unwrapped)") or py.output())
    py.kill()
  end)

  it("treats a peer that closes without close_notify as the end of the stream", function()
    local py, port = py_server("server", "--ragged")
    local c, ev = line_client(port, client_ctx())
    ev.on_line = function(self, l) if l == "hello from python" then self:push("bye\n") end end
    H.run_until(function() return ev.closed end, 10)
    assert.same({ "hello from python", "bye" }, ev.lines)
    assert.same({}, ev.errors)
    py.kill()
  end)

  it("serves a Python ssl client, which gets our close_notify", function()
    local s, port, sev = line_server(server_ctx())
    local py = H.spawn(PY .. "client " .. port .. " " .. D .. "ca.pem localhost", 30)
    py_done(py)
    local out = py.output()
    assert.matches("subject localhost", out)
    assert.matches("answer lua: ping", out)
    assert.matches("OK unwrapped", out)
    assert.same({}, sev.errors)
    py.kill()
  end)

  it("shutdown_when_done sends the queue, then a close_notify and a FIN, and goes on reading", function()
    local ctx = server_ctx()
    local E = asynchat.async_chat:extend()
    local got, closed = nil, false
    function E:init(sock)
      asynchat.async_chat.init(self, sock)
      self:set_terminator("\n")
      self:start_tls(ctx)
      self:push(("t"):rep(1024 * 1024))          -- goes out after the handshake
      self:shutdown_when_done()
    end
    function E:found_terminator() got = self:get_data() end
    function E:handle_close() closed = true; self:close() end
    local _, port = listener(function(sock) E(sock) end)
    local py = H.spawn(PY .. "halfclose " .. port .. " " .. D .. "ca.pem localhost", 30)
    local out = py_done(py)
    H.run_until(function() return closed end, 10)
    assert.matches("got 1048576\n", out)
    assert.matches("OK sent after the close_notify", out)
    assert.equal("after the close_notify", got)
    py.kill()
  end)

  it("holds a paused async_chat's frames and the records read ahead until resume_reading", function()
    local ctx = server_ctx()
    local S = asynchat.async_chat:extend { ac_in_buffer_size = 16 }   -- most of a record stays read ahead
    local lines = {}
    function S:init(sock)
      asynchat.async_chat.init(self, sock)
      self:set_terminator("\n")
      self:start_tls(ctx)
    end
    function S:found_terminator()
      local l = self:get_data()
      lines[#lines + 1] = l
      if l == "pause" then self:pause_reading() end
    end
    local srv
    local _, port = listener(function(sock) srv = S(sock) end)
    local C = asynchat.async_chat:extend()
    function C:found_terminator() end
    local c = C()
    c:create_socket()
    c:set_terminator("\n")
    c:connect { "127.0.0.1", port }
    c:start_tls(client_ctx(), { server_hostname = "localhost" })
    local want = { "a", "pause" }
    local text = { "a\npause\n" }
    for i = 1, 200 do
      want[#want + 1] = "line " .. i
      text[#text + 1] = "line " .. i .. "\n"
    end
    c:push(table.concat(text))
    H.run_until(function() return #lines == 2 end, 10)
    H.run_for(0.2)
    assert.same({ "a", "pause" }, lines)            -- nothing more while paused
    srv:resume_reading()                            -- the client sends nothing more from here
    H.run_until(function() return #lines == #want end, 10)
    assert.same(want, lines)
  end)

  it("fails a host name mismatch with the documented error and delivers nothing", function()
    local py, port = py_server("server")
    local c, ev = line_client(port, client_ctx(), { server_hostname = "wrong.test" })
    H.run_until(function() return ev.closed end, 10)
    assert.equal(1, #ev.errors)
    local e = ev.errors[1]
    assert.is_true(asyncore.is_error(e, "CERTIFICATE_VERIFY_FAILED"))
    assert.equal("handshake", e.op)
    assert.matches("hostname mismatch", tostring(e))
    assert.equal(0, ev.handshakes)
    assert.equal(0, ev.reads)        -- "hello from python" never reached the script
    assert.same({}, ev.lines)
    py.kill()
  end)

  it("fails an untrusted CA, and verify = false accepts it", function()
    local py, port = py_server("rogue")
    local c, ev = line_client(port, client_ctx())
    H.run_until(function() return ev.closed end, 10)
    assert.is_true(asyncore.is_error(ev.errors[1], "CERTIFICATE_VERIFY_FAILED"))
    assert.matches("certificate", ev.errors[1].message)
    assert.same({}, ev.lines)
    py.kill()

    py, port = py_server("rogue")
    local c2, ev2 = line_client(port, asyncore.tls_context { verify = false })
    ev2.on_line = function(self, l) if l == "hello from python" then self:push("bye\n") end end
    H.run_until(function() return ev2.closed end, 10)
    assert.same({ "hello from python", "bye" }, ev2.lines)
    assert.is_false(ev2.info.verified)
    py.kill()
  end)

  it("negotiates ALPN with a Python server and with ours", function()
    local py, port = py_server("server", "--alpn http/1.1,h2")
    local c, ev = line_client(port, client_ctx { alpn = { "h2", "http/1.1" } })
    ev.on_line = function(self, l) if l == "hello from python" then self:push("bye\n") end end
    H.run_until(function() return ev.closed end, 10)
    assert.equal("http/1.1", ev.info.alpn)   -- the server's preference wins
    assert.equal("alpn http/1.1", py.wait_line("(alpn [^\n]+)"))
    py.kill()

    local s, port2, sev = line_server(server_ctx { alpn = { "x-ours", "h2" } })
    local py2 = H.spawn(PY .. "client " .. port2 .. " " .. D .. "ca.pem localhost --alpn h2,x-ours", 30)
    py_done(py2, 10)
    assert.matches("alpn x%-ours", py2.output())
    assert.equal("x-ours", sev.info.alpn)
    py2.kill()
  end)

  it("picks the certificate by SNI", function()
    local other = asyncore.tls_context { mode = "server", certfile = D .. "other.pem", keyfile = D .. "other.key" }
    local s, port, sev = line_server(server_ctx { sni = { ["other.test"] = other } })
    local py = H.spawn(PY .. "client " .. port .. " " .. D .. "ca.pem other.test", 30)
    py_done(py)
    assert.matches("subject other.test", py.output())
    py.kill()
    local py2 = H.spawn(PY .. "client " .. port .. " " .. D .. "ca.pem localhost", 30)
    py_done(py2, 10)
    assert.matches("subject localhost", py2.output())
    py2.kill()
    assert.same({}, sev.errors)
  end)

  it("does mutual TLS: a client certificate is asked for and checked", function()
    local ctx = server_ctx { verify = true, cafile = D .. "ca.pem" }
    local s, port, sev = line_server(ctx)
    local py = H.spawn(PY .. "client " .. port .. " " .. D .. "ca.pem localhost --cert " .. D ..
      "client.pem --key " .. D .. "client.key", 30)
    py_done(py)
    assert.matches("OK unwrapped", py.output())
    assert.equal("CN=client", sev.info.peer_certificate.subject)
    assert.is_true(sev.info.verified)
    py.kill()
    -- without a certificate: the server's channel fails its handshake
    local py2 = H.spawn(PY .. "client " .. port .. " " .. D .. "ca.pem localhost", 30)
    H.run_until(function() return #sev.errors > 0 end, 10)
    assert.equal("handshake", sev.errors[1].op)
    assert.matches("CERTIFICATE", sev.errors[1].code)
    py2.kill()
    -- our client with its certificate
    local c, ev = line_client(port, client_ctx { certfile = D .. "client.pem", keyfile = D .. "client.key" })
    c:push("bye\n")
    H.run_until(function() return ev.closed end, 10)
    assert.same({ "bye" }, ev.lines)
  end)

  it("STARTTLS: the ClientHello in the same segment as the STARTTLS line reaches the handshake", function()
    local ctx = server_ctx()
    local E = asynchat.async_chat:extend()
    local sev = { errors = {} }
    function E:init(sock)
      asynchat.async_chat.init(self, sock)
      self:set_terminator("\r\n")
      self:push("220 ready\r\n")
    end
    function E:found_terminator()
      local l = self:get_data()
      if l == "STARTTLS" then
        self:push("220 go ahead\r\n")   -- in the clear, before the handshake
        self:start_tls(ctx)
        self:set_terminator("\n")
      else
        sev.line = l
        self:push("tls: " .. l .. "\n")
      end
    end
    function E:handle_handshake() sev.info = self:tls_info() end
    function E:handle_error(err) sev.errors[#sev.errors + 1] = err; self:close() end
    local s, port = listener(function(sock) E(sock) end)
    local py = H.spawn(PY .. "starttls " .. port .. " " .. D .. "ca.pem localhost", 30)
    py_done(py)
    local out = py.output()
    assert.matches("greeting 220 ready", out)
    assert.matches("reply 220 go ahead", out)
    assert.matches("answer tls: ping", out)
    assert.equal("ping", sev.line)
    assert.equal("TLSv1.3", sev.info.version)
    assert.same({}, sev.errors)
    py.kill()
  end)

  it("STARTTLS on the client side: queued clear text goes first, early reads feed the handshake", function()
    -- our server: greets, waits for "STARTTLS", answers and starts TLS at once
    local ctx = server_ctx()
    local E = asynchat.async_chat:extend()
    function E:init(sock)
      asynchat.async_chat.init(self, sock)
      self:set_terminator("\n")
    end
    function E:found_terminator()
      local l = self:get_data()
      if l == "STARTTLS" then
        self:push("OK\n")
        self:start_tls(ctx)
      else
        self:push("tls " .. l .. "\n")
      end
    end
    local s, port = listener(function(sock) E(sock) end)
    local C = asyncore.dispatcher_with_send:extend()
    local got, info = "", nil
    function C:handle_connect() end
    function C:handle_read()
      got = got .. self:recv(100)
      if not self.tls and got == "OK\n" then
        self.tls = true
        got = ""
        self:start_tls(client_ctx())
        self:send("hello\n")     -- waits for the handshake, then goes encrypted
      end
    end
    function C:handle_handshake() info = self:tls_info() end
    local c = C()
    c:create_socket()
    c:connect { "localhost", port }
    c:send("STARTTLS\n")
    H.run_until(function() return got == "tls hello\n" end, 10)
    assert.equal("TLSv1.3", info.version)
  end)

  for _, class in ipairs { "dispatcher_with_send", "async_chat" } do
    it("moves 32 MiB each way intact through " .. class, function()
      local ctx = server_ctx()
      local Echo
      if class == "async_chat" then
        Echo = asynchat.async_chat:extend()
        function Echo:init(sock) asynchat.async_chat.init(self, sock); self:set_terminator(nil); self:start_tls(ctx) end
        function Echo:collect_incoming_data(d) self:push(d) end
      else
        Echo = asyncore.dispatcher_with_send:extend()
        function Echo:init(sock) asyncore.dispatcher_with_send.init(self, sock); self:start_tls(ctx) end
        function Echo:handle_read()
          local d = self:recv(65536)
          if #d > 0 then self:send(d) end
        end
      end
      function Echo:handle_close() self:close() end
      local s, port = listener(function(sock) Echo(sock) end)
      local n = 32 * 1024 * 1024
      local py = H.spawn(PY .. "bulk " .. port .. " " .. D .. "ca.pem localhost " .. n, 120)
      py_done(py, 100)
      assert.equal("OK " .. n, py.output():match("OK %d+") or py.output())
      py.kill()
    end)
  end

  it("fails a plaintext client cleanly and keeps serving", function()
    local s, port, sev = line_server(server_ctx())
    local py = H.spawn(PY .. "plain " .. port, 30)
    H.run_until(function() return #sev.errors > 0 end, 10)
    assert.equal("handshake", sev.errors[1].op)
    assert.is_string(sev.errors[1].code)
    H.run_until(function() return py.output():match("OK") end, 10)
    py.kill()
    -- still serving
    local c, ev = line_client(port, client_ctx())
    c:push("bye\n")
    H.run_until(function() return ev.closed end, 10)
    assert.same({ "bye" }, ev.lines)
  end)

  it("a refused connect with TLS started reaches handle_error as a refused connect", function()
    local s, port = listener(function(sock) sock:close() end)
    s:close()
    local c, ev = line_client(port, client_ctx())
    H.run_until(function() return ev.closed end, 10)
    assert.is_true(asyncore.is_error(ev.errors[1], "ECONNREFUSED"))
    assert.equal(0, ev.handshakes)
  end)

  it("reports a failed handshake once, also to a handle_error that does not close", function()
    local py, port = py_server("rogue")
    local C = asyncore.dispatcher:extend()
    local errors, reads = {}, 0
    function C:handle_connect() end
    function C:handle_read() reads = reads + 1 end
    function C:handle_error(err) errors[#errors + 1] = err end   -- keeps the channel
    local c = C()
    c:create_socket()
    c:connect { "localhost", port }
    c:start_tls(client_ctx())
    H.run_until(function() return #errors > 0 end, 10)
    H.run_for(0.3)
    assert.equal(1, #errors)
    assert.equal("handshake", errors[1].op)
    assert.equal(0, reads)
    assert.is_nil(c:tls_info())
    local ok, err = pcall(c.recv, c, 10)
    assert.is_false(ok)
    assert.is_true(asyncore.is_error(err, "EPROTO"))
    c:close()
    py.kill()
  end)

  it("works with openssl s_server and s_client", function()
    -- s_server: our client sends a line, s_server prints it
    -- (its standard input stays open: at its end s_server would stop)
    local sp = H.spawn("sh -c 'sleep 20 | openssl s_server -accept 0 -naccept 1 -cert " .. D ..
      "server.pem -key " .. D .. "server.key'", 30)
    local port = tonumber(sp.wait_line("ACCEPT.-:(%d+)") or sp.wait_line(":(%d+)\n"))
    local c, ev = line_client(port, client_ctx())
    ev.on_line = function() end
    c:push("from lua\n")
    H.run_until(function() return ev.handshakes == 1 end, 10)
    H.run_for(0.2)
    H.run_until(function() return sp.output():match("from lua") end, 10)
    c:close()
    sp.kill()
    -- s_client against our server: it sends a line, reads the answer
    local s, port2 = line_server(server_ctx())
    local cp = H.spawn("sh -c '(printf \"via openssl\\n\"; sleep 2) | openssl s_client -connect 127.0.0.1:" ..
      port2 .. " -servername localhost -verify_return_error -CAfile " .. D .. "ca.pem -quiet'", 30)
    H.run_until(function() return cp.output():match("lua: via openssl") end, 10)
    cp.kill()
  end)

  it("refuses renegotiation (openssl s_client -tls1_2, command R)", function()
    local s, port, sev = line_server(server_ctx())
    local cp = H.spawn("sh -c '(printf \"one\\n\"; sleep 0.5; printf \"R\\n\"; sleep 0.5; printf \"two\\n\"; " ..
      "sleep 1) | openssl s_client -tls1_2 -connect 127.0.0.1:" .. port .. " -CAfile " .. D .. "ca.pem'", 30)
    H.run_until(function() return cp.output():match("no renegotiation") end, 10)
    assert.matches("lua: one", cp.output())
    assert.not_matches("lua: two", cp.output())
    assert.equal(1, sev.handshakes)
    cp.kill()
  end)

  it("announces records read ahead: a small recv() gets the rest without new socket events", function()
    local ctx = server_ctx()
    local S = asyncore.dispatcher_with_send:extend()
    function S:init(sock) asyncore.dispatcher_with_send.init(self, sock); self:start_tls(ctx) end
    function S:handle_handshake() self:send(string.rep("x", 50000)) end
    function S:handle_read() self:recv(10) end
    local s, port = listener(function(sock) S(sock) end)
    local C = asyncore.dispatcher:extend()
    local got = 0
    function C:handle_connect() end
    function C:handle_read() got = got + #self:recv(7) end   -- tiny reads
    function C:writable() return false end
    local c = C()
    c:create_socket()
    c:connect { "localhost", port }
    c:start_tls(client_ctx())
    H.run_until(function() return got == 50000 end, 10)
  end)
end)
