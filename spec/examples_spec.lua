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

-- the n-th mail (default the first) smtp_sink.lua stored (it prints "stored FILE")
local function stored_mail(server, n)
  local name
  H.run_until(function()
    local i = 0
    for file in server.output():gmatch("stored (%S+)") do
      i = i + 1
      if i == (n or 1) then name = file end
    end
    return name ~= nil
  end, 10)
  local f = assert(io.open(name, "rb"))
  local mail = f:read("a")
  f:close()
  return mail
end

-- resident memory of process pid, in KiB
local function rss_kib(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  local s = f and f:read("a") or ""
  if f then f:close() end
  return tonumber(s:match("VmRSS:%s*(%d+)")) or 0
end

-- AddressSanitizer (make check) keeps freed memory in quarantine: resident
-- sizes say nothing there
local ASAN = (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) ~= nil

local function halfclose_peer(port, args, limit)
  return H.spawn(("python3 %s/spec/peers/py_halfclose.py %d %s"):format(H.ROOT, port, args), limit or 120)
end

local function sha256(path, skip)
  local cmd = skip and ("tail -c +%d %s | sha256sum"):format(skip + 1, path) or ("sha256sum " .. path)
  return H.capture(cmd):match("^(%x+)")
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

  it("echo_server.lua returns every byte of 16 MiB to a client that half-closes", function()
    local port = free_port()
    start(H.LUA .. " examples/echo_server.lua 127.0.0.1 " .. port)
    wait_port(port)
    local out = os.tmpname()
    local p = halfclose_peer(port, ("send %d 21 %s"):format(16 * 1024 * 1024, out))
    p.wait_line("received %d+[^\n]*\n", 120)
    os.remove(out)
    assert.equal(p.output():match("sent (%d+ %x+)"), p.output():match("received (%d+ %x+)"))
  end)

  it("http_server.lua sends a whole 200 MB file after a half-close, and stays small under a client that never reads", function()
    local port = free_port()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute(("mkdir -p %s && head -c 200000000 /dev/urandom > %s/big.bin && head -c 65536 /dev/urandom > %s/page.bin")
      :format(dir, dir, dir))
    local server = start(("%s examples/http_server.lua 127.0.0.1 %d %s"):format(H.LUA, port, dir), 120)
    wait_port(port)
    -- the request, then shutdown(SHUT_WR): the whole answer still comes
    local out = os.tmpname()
    local p = halfclose_peer(port, "request 'GET /big.bin HTTP/1.1\\r\\n\\r\\n' " .. out)
    p.wait_line("received %d+[^\n]*\n", 120)
    local head = io.open(out, "rb"):read(200):match("^(.-\r\n\r\n)")
    assert.matches("^HTTP/1%.1 200 OK\r\nContent%-Length: 200000000\r\n", head)
    assert.equal(#head + 200000000, tonumber(p.output():match("received (%d+)")))
    assert.equal(sha256(dir .. "/big.bin"), sha256(out, #head))
    os.remove(out)
    -- a client pipelining requests it never reads: the server stops reading
    -- it at about 1 MiB queued, and serves the others meanwhile
    local pid = server.child_pid()
    local before = rss_kib(pid)
    local flood = halfclose_peer(port,
      "flood 'GET /hello HTTP/1.1\\r\\n\\r\\nGET /page.bin HTTP/1.1\\r\\n\\r\\nGET /hello HTTP/1.1\\r\\n\\r\\n' 3", 30)
    local most = before
    local served = 0
    H.run_until(function()
      most = math.max(most, rss_kib(pid))
      if served < 5 then
        local t0 = H.now()
        assert.equal("Hello, world!", H.capture("timeout 5 env -u LD_PRELOAD curl -s http://127.0.0.1:" .. port .. "/hello"))
        assert.is_true(H.now() - t0 < 3, "another client waited " .. (H.now() - t0) .. " s")
        served = served + 1
      end
      return flood.output():match("sent %d+") ~= nil
    end, 30)
    local sent = tonumber(flood.output():match("sent (%d+)"))
    assert.is_true(sent < 64 * 1024 * 1024, "the server read " .. sent .. " bytes of requests it could not answer")
    if not ASAN then
      assert.is_true(most - before < 16 * 1024, ("the server grew by %d KiB"):format(most - before))
    end
    assert.not_matches("error", server.output())
    os.execute("rm -rf " .. dir)
  end)

  it("client examples say a refused connect in one line and exit non-zero", function()
    local port = free_port()                     -- nobody listens there
    for _, cmd in ipairs {
      "examples/echo_client.lua 127.0.0.1 " .. port .. " ping",
      "examples/time_client.lua 127.0.0.1 " .. port,
      "examples/line_client.lua 127.0.0.1 " .. port .. " hello",
      "examples/http_client.lua http://127.0.0.1:" .. port .. "/",
    } do
      local out = os.tmpname()
      local ok, how, code = os.execute(("timeout 20 %s %s > %s 2>&1"):format(H.LUA, cmd, out))
      local f = io.open(out); local text = f:read("a"); f:close(); os.remove(out)
      assert.is_falsy(ok, cmd .. " exited 0:\n" .. text)
      assert.equal("exit", how)
      assert.is_true(code ~= 124, cmd .. " hung")
      assert.matches("127%.0%.0%.1:" .. port .. ".*Connection refused %(ECONNREFUSED%)", text)
      assert.not_matches("traceback", text)
    end
  end)

  it("redis_server.lua serves redis-cli: commands, inline and multibulk, pipelining", function()
    if not H.capture("command -v redis-cli"):match("redis%-cli") then
      error("redis-cli is missing: apt-get install redis-tools")
    end
    local port = free_port()
    local server = start(H.LUA .. " examples/redis_server.lua 127.0.0.1 " .. port)
    server.wait_line("redis server on")
    local function cli(args)
      return H.capture(("timeout 10 redis-cli -p %d %s"):format(port, args))
    end
    assert.equal("PONG\n", cli("ping"))
    assert.equal("hello world\n", cli("echo 'hello world'"))
    assert.equal("OK\n", cli("set greeting 'multi\r\nline'"))
    assert.equal("multi\r\nline\n", cli("get greeting"))   -- a value holding the separator
    assert.equal("1\n", cli("incr counter"))
    assert.equal("2\n", cli("incr counter"))
    assert.equal("2\n", cli("exists counter greeting"))
    assert.matches("^ERR value is not an integer or out of range\n", cli("incr greeting"))
    assert.equal("2\n", cli("del counter greeting nothing"))
    assert.equal("\n", cli("get greeting"))
    assert.matches("ERR unknown command 'nosuch'", cli("nosuch"))
    -- a pipelined batch of inline and multibulk commands, one write, split replies
    local c = asyncore.socket()
    c:setblocking(true)
    c:connect { "127.0.0.1", port }
    c:send("PING\r\nSET k 41\r\n*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nEXISTS k\n")
    local want = "+PONG\r\n+OK\r\n:42\r\n$2\r\n42\r\n:1\r\n"
    local got = ""
    while #got < #want do
      local d = c:recv(4096)
      if d == "" then break end
      got = got .. d
    end
    assert.equal(want, got)
    c:close()
    -- redis-cli's own pipe mode: 1,000 commands in one stream
    local cmds = {}
    for i = 1, 1000 do cmds[i] = ("SET key:%d %d\r\n"):format(i, i) end
    local f = os.tmpname()
    local h = io.open(f, "w"); h:write(table.concat(cmds)); h:close()
    local out = H.capture(("timeout 10 redis-cli -p %d --pipe < %s"):format(port, f))
    os.remove(f)
    assert.matches("errors: 0, replies: 1000", out)
    assert.equal("1000\n", cli("get key:1000"))
  end)

  -- under AddressSanitizer freed memory sits in its quarantine (256 MiB): the
  -- resident size says nothing there
  local asan = (os.getenv("LD_PRELOAD") or ""):find("asan") ~= nil
  local it_rss = asan and pending or it
  it_rss("http_server.lua gives back the memory of closed channels at once", function()
    local port = free_port()
    local server = start(H.LUA .. " examples/http_server.lua 127.0.0.1 " .. port)
    server.wait_line("http server on")
    local pid = server.child_pid()
    local function rss_kib()
      local f = io.open("/proc/" .. pid .. "/status")
      local kib = f:read("a"):match("VmRSS:%s*(%d+)")
      f:close()
      return tonumber(kib)
    end
    -- one connection at a time, each an endless header line past max_in_buffer
    -- (16 MiB): the server logs the overflow and closes the connection
    local chunk = ("a"):rep(1 << 20)
    local function flood()
      local c = asyncore.socket()
      c:setblocking(true)
      c:connect { "127.0.0.1", port }
      c:send("GET /")
      for _ = 1, 24 do
        if not pcall(c.send, c, chunk) then break end
      end
      pcall(c.recv, c, 100)
      c:close()
    end
    flood()                                  -- the first one grows the process once
    H.run_for(0.2)
    local start_kib = rss_kib()
    for _ = 1, 8 do flood() end
    -- the last close may still be under way on a busy machine: give it 2 s
    -- (without the fix the memory stays until a garbage collection)
    local grew
    local deadline = H.now() + 2
    repeat
      grew = rss_kib() - start_kib
      if grew < 8 * 1024 then break end
      H.run_for(0.05)
    until H.now() > deadline
    assert.is_true(grew < 8 * 1024, ("resident memory grew by %d KiB over 8 closed connections"):format(grew))
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

  it("proxy.lua moves 256 MiB to a client reading at a limited rate in little memory, and forwards a half-close", function()
    local hport, pport = free_port(), free_port()
    local dir = os.tmpname()
    os.remove(dir)
    local SIZE = 256 * 1024 * 1024
    os.execute(("mkdir -p %s && head -c %d /dev/urandom > %s/big.bin"):format(dir, SIZE, dir))
    start(("%s examples/http_server.lua 127.0.0.1 %d %s"):format(H.LUA, hport, dir), 120)
    wait_port(hport)
    local proxy = start(("%s examples/proxy.lua %d 127.0.0.1 %d"):format(H.LUA, pport, hport), 120)
    proxy.wait_line("forwarding")
    local pid = proxy.child_pid()
    local before = rss_kib(pid)
    local out = os.tmpname()
    -- 64 MiB/s: the target (a local file) sends many times faster than that
    local p = halfclose_peer(pport, ("slow %s %d 'GET /big.bin HTTP/1.1\\r\\nConnection: close\\r\\n\\r\\n'")
      :format(out, 64 * 1024 * 1024), 120)
    local most = before
    H.run_until(function()
      most = math.max(most, rss_kib(pid))
      return p.output():match("received %d+\n") ~= nil
    end, 120)
    local got = tonumber(p.output():match("received (%d+)"))
    local head = io.open(out, "rb"):read(200):match("^(.-\r\n\r\n)")
    assert.equal(#head + SIZE, got, p.output())
    assert.equal(sha256(dir .. "/big.bin"), sha256(out, #head))
    os.remove(out)
    if not ASAN then
      assert.is_true(most - before < 16 * 1024, ("the proxy grew by %d KiB"):format(most - before))
    end
    -- a client that shuts down its sending side after the request still gets
    -- the whole answer (the FIN goes on to the target, the answer comes back)
    out = os.tmpname()
    local q = halfclose_peer(pport, "request 'GET /big.bin HTTP/1.1\\r\\n\\r\\n' " .. out)
    q.wait_line("received %d+\n", 120)
    head = io.open(out, "rb"):read(200):match("^(.-\r\n\r\n)")
    assert.equal(#head + SIZE, tonumber(q.output():match("received (%d+)")), q.output())
    os.remove(out)
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

  it("chat_server.lua broadcasts between users; line_client.lua talks to it", function()
    local port = free_port()
    local server = start(H.LUA .. " examples/chat_server.lua 127.0.0.1 " .. port)
    server.wait_line("chat server on")
    local asynchat = require "asynchat"
    local User = asynchat.async_chat:extend()
    function User:init(name)
      asynchat.async_chat.init(self)
      self.lines = {}
      self:set_terminator("\r\n")
      self:create_socket()
      self:connect { "127.0.0.1", port }
      self:push("/nick " .. name .. "\r\n")
    end
    function User:handle_connect() end
    function User:found_terminator() self.lines[#self.lines + 1] = self:get_data() end
    local function has(u, text)
      for _, l in ipairs(u.lines) do if l == text then return true end end
      return false
    end
    local alice, bob = User("alice"), User("bob")
    H.run_until(function() return has(alice, "* you are alice") and has(bob, "* you are bob") end, 10)
    alice:push("hello bob\r\n")
    H.run_until(function() return has(bob, "alice: hello bob") end, 10)
    local out = H.capture(("WAIT=0.5 timeout 20 %s examples/line_client.lua 127.0.0.1 %d '/nick carol' "
      .. "'/who' 'hi all' '/quit'"):format(H.LUA, port))
    assert.matches("%* you are carol", out)
    assert.matches("%* here: alice, bob, carol", out)
    assert.matches("%* bye", out)
    H.run_until(function() return has(alice, "carol: hi all") and has(bob, "* carol left") end, 10)
    assert.is_false(has(alice, "alice: hello bob"), "a user got its own line back")
  end)

  it("http_server.lua serves curl: /hello, files, POST bodies, keep-alive, 404", function()
    local port = free_port()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir)
    local big = H.blob(3 * 1024 * 1024 + 17, 11)
    local f = io.open(dir .. "/big.bin", "wb"); f:write(big); f:close()
    f = io.open(dir .. "/index.html", "wb"); f:write("<p>index</p>"); f:close()
    start(("%s examples/http_server.lua 127.0.0.1 %d %s"):format(H.LUA, port, dir))
    wait_port(port)
    local base = "http://127.0.0.1:" .. port
    -- curl runs without the sanitizer preload of `make check` (it hangs under it)
    local function curl(args) return H.capture("timeout 20 env -u LD_PRELOAD curl -s " .. args) end
    assert.equal("Hello, world!", curl(base .. "/hello"))
    local head = curl("-i " .. base .. "/hello")
    assert.matches("^HTTP/1%.1 200 OK\r\nContent%-Length: 13\r\nContent%-Type: text/plain\r\n\r\nHello, world!$", head)
    assert.equal("<p>index</p>", curl(base .. "/"))
    os.execute(("timeout 20 env -u LD_PRELOAD curl -s -o %s/got.bin %s/big.bin"):format(dir, base))
    local g = io.open(dir .. "/got.bin", "rb")
    local got = g:read("a"); g:close()
    assert.is_true(got == big, "the file came back changed")
    local body = H.blob(200000, 4)
    f = io.open(dir .. "/post.bin", "wb"); f:write(body); f:close()
    os.execute(("timeout 20 env -u LD_PRELOAD curl -s --data-binary @%s/post.bin -o %s/echo.bin %s/echo"):format(dir, dir, base))
    g = io.open(dir .. "/echo.bin", "rb")
    local echoed = g:read("a"); g:close()
    assert.is_true(echoed == body, "POST body not echoed intact")
    local verbose = curl("-v " .. base .. "/hello " .. base .. "/hello 2>&1")
    assert.matches("Re%-using existing connection", verbose)
    assert.equal("404", curl("-o /dev/null -w '%{http_code}' " .. base .. "/nope"))
    assert.equal("404", curl("-o /dev/null -w '%{http_code}' " .. base .. "/../etc/passwd"))
    os.execute("rm -rf " .. dir)
  end)

  it("http_server.lua keeps to its root and answers odd requests cleanly", function()
    local port = free_port()
    local top = os.tmpname()
    os.remove(top)
    local dir = top .. "/www"
    os.execute(("mkdir -p %s/www/sub %s/www-secret %s/www/.git"):format(top, top, top))
    local function write(path, text) local f = io.open(path, "wb"); f:write(text); f:close() end
    write(top .. "/www-secret/pw.txt", "secret")
    write(top .. "/www/.git/config", "gitconfig")
    write(top .. "/www/sub/ok.txt", "fine")
    write(top .. "/www/big.bin", H.blob(8 * 1024 * 1024, 3))
    os.execute(("ln -s %s/www-secret %s/www/out; ln -s %s/www-secret/pw.txt %s/www/pw.txt; ln -s sub/ok.txt %s/www/in.txt")
      :format(top, top, top, top, top))
    local server = start(("%s examples/http_server.lua 127.0.0.1 %d %s"):format(H.LUA, port, dir))
    wait_port(port)
    local base = "http://127.0.0.1:" .. port
    local function curl(args) return H.capture("timeout 20 env -u LD_PRELOAD curl -s " .. args) end
    local function code(args) return curl("-o /dev/null -w '%{http_code}' " .. args) end
    -- one raw request on a fresh connection: everything the server sends until it closes
    -- (or until `want` bytes arrived)
    local function raw(req, want)
      local c = asyncore.socket()
      c:setblocking(true)
      c:connect { "127.0.0.1", port }
      c:send(req)
      local got = ""
      while not want or #got < want do
        local ok, d = pcall(c.recv, c, 65536)
        if not ok or d == "" then break end
        got = got .. d
      end
      c:close()
      return got
    end
    -- paths: a target without "/", "..", hidden names, symbolic links out of the root
    assert.matches("^HTTP/1%.1 400", raw("GET -secret/pw.txt HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert.matches("^HTTP/1%.1 400", raw("GET git/config HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert.not_matches("secret", raw("GET /../www-secret/pw.txt HTTP/1.1\r\nConnection: close\r\n\r\n"))
    assert.equal("404", code("--path-as-is " .. base .. "/../www-secret/pw.txt"))
    assert.equal("404", code("--path-as-is " .. base .. "/%2e%2e/www-secret/pw.txt"))
    assert.equal("404", code(base .. "/.git/config"))
    assert.equal("404", code(base .. "/out/pw.txt"))
    assert.equal("404", code(base .. "/pw.txt"))
    assert.equal("fine", curl(base .. "/in.txt"))            -- a link that stays inside is fine
    assert.equal("fine", curl(base .. "/sub/ok.txt"))
    -- header names in any case
    assert.matches("\r\n\r\nhello$", raw("POST /echo HTTP/1.1\r\nContent-length: 5\r\nconnection: CLOSE\r\n\r\nhello"))
    -- chunked request bodies: 501 and the connection closes
    local r = raw("POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert.matches("^HTTP/1%.1 501", r)
    assert.matches("Connection: close", r)
    -- HEAD: headers only, error responses too
    r = raw("HEAD /sub/ok.txt HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert.matches("^HTTP/1%.1 200 OK\r\nContent%-Length: 4\r\n.-\r\n\r\n$", r)
    r = raw("HEAD /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert.matches("^HTTP/1%.1 404 Not Found\r\nContent%-Length: 10\r\n.-\r\n\r\n$", r)
    r = raw("HEAD /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert.matches("\r\n\r\n$", r)
    -- Expect: 100-continue
    local v = curl("-v -H 'Expect: 100-continue' --data-binary hello " .. base .. "/echo 2>&1")
    assert.matches("HTTP/1%.1 100 Continue", v)
    assert.matches("hello$", v)
    -- bad Content-Length: 400, no traceback in the server's log
    for _, bad in ipairs { "-5", "abc", "1.5", "" } do
      r = raw("POST /echo HTTP/1.1\r\nContent-Length: " .. bad .. "\r\n\r\n")
      assert.matches("^HTTP/1%.1 400", r)
    end
    assert.not_matches("traceback", server.output())
    assert.not_matches("error", server.output())
    -- an aborted download closes its file at once
    local pid = server.child_pid()
    local function open_files()
      return select(2, H.capture("ls -l /proc/" .. pid .. "/fd"):gsub("big%.bin", ""))
    end
    local c = asyncore.socket()
    c:setblocking(true)
    c:connect { "127.0.0.1", port }
    c:send("GET /big.bin HTTP/1.1\r\n\r\n")
    c:recv(1000)
    H.run_until(function() return open_files() == 1 end, 5)
    c:close()
    H.run_until(function() return open_files() == 0 end, 5)
    -- and the server still serves
    assert.equal("Hello, world!", curl(base .. "/hello"))
    os.execute("rm -rf " .. top)
  end)

  -- smtp_sink.lua --tls on a free port: the process, its port, its directory, the certificates
  local function start_tls_sink()
    local port = free_port()
    local dir = os.tmpname()
    os.remove(dir)
    local D = H.tls_certs()
    local server = start(("%s examples/smtp_sink.lua --tls %sserver.pem %sserver.key 127.0.0.1 %d %s")
      :format(H.LUA, D, D, port, dir))
    server.wait_line("smtp sink on")
    return server, port, dir, D
  end

  it("smtp_sink.lua --tls offers STARTTLS, and smtplib's verified starttls() delivers over it", function()
    local server, port, dir, D = start_tls_sink()
    local out = H.capture(([[timeout 20 python3 -c "
import smtplib, ssl
ctx = ssl.create_default_context(cafile='%sca.pem')
with smtplib.SMTP('localhost', %d) as s:
    s.ehlo()
    print('offers', s.has_extn('starttls'))
    s.starttls(context=ctx)
    s.ehlo()
    print('tls', s.sock.version())
    s.sendmail('alice@example.org', ['bob@example.org'], 'Subject: sealed\r\n\r\nover TLS\r\n')
print('sent')
"]]):format(D, port))
    assert.matches("offers True", out)
    assert.matches("tls TLSv1.3", out)
    assert.matches("sent", out)
    local mail = stored_mail(server)
    assert.matches("Subject: sealed", mail)
    os.execute("rm -rf " .. dir)
  end)

  it("mail_client.lua sends a message as a straight-line dialogue, in the clear and over STARTTLS", function()
    local server, port, dir, D = start_tls_sink()
    local out = H.capture(("printf 'hello bob\\n.a line with a dot\\n' | timeout 20 %s examples/mail_client.lua "
      .. "127.0.0.1 %d alice@example.org bob@example.org greetings"):format(H.LUA, port))
    assert.equal("sent\n", out)
    local mail = stored_mail(server)
    assert.matches("Subject: greetings", mail)
    assert.matches("hello bob\r?\n%.a line with a dot", mail)
    out = H.capture(("printf 'sealed\\n' | timeout 20 %s examples/mail_client.lua --starttls %sca.pem "
      .. "localhost %d alice@example.org bob@example.org tls"):format(H.LUA, D, port))
    assert.equal("sent\n", out)
    assert.matches("Subject: tls", stored_mail(server, 2))
    -- a refused connection: one line, exit status 1
    local code = os.execute(("%s examples/mail_client.lua 127.0.0.1 %d a@b c@d < /dev/null 2>/dev/null")
      :format(H.LUA, free_port()))
    assert.is_not_true(code)
    os.execute("rm -rf " .. dir)
  end)

  it("http_server.lua --tls serves curl --cacert, closes on Connection: close, and http_client.lua " ..
    "fetches https:// verified, following a redirect from http", function()
    local D = H.tls_certs()
    local port = free_port()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir .. " && printf 'secret page' > " .. dir .. "/page.txt")
    local server = start(("%s examples/http_server.lua --tls %sserver.pem %sserver.key 127.0.0.1 %d %s")
      :format(H.LUA, D, D, port, dir))
    server.wait_line("https://")
    local out = H.capture(("timeout 20 env -u LD_PRELOAD curl -sS --cacert %sca.pem https://localhost:%d/hello https://localhost:%d/page.txt")
      :format(D, port, port))
    assert.equal("Hello, world!secret page", out)
    -- Connection: close: the header in the answer, then the connection ends
    out = H.capture(("timeout 20 env -u LD_PRELOAD curl -sS -i --http1.1 --cacert %sca.pem -H 'Connection: close' https://localhost:%d/hello")
      :format(D, port))
    assert.matches("Connection: close", out)
    assert.matches("Hello, world!$", out)
    -- an untrusted CA: curl refuses; a plaintext client: the server logs one line and goes on
    out = H.capture(("timeout 20 env -u LD_PRELOAD curl -sS https://localhost:%d/hello"):format(port))
    assert.matches("certificate", out)
    H.capture(("timeout 20 env -u LD_PRELOAD curl -sS http://127.0.0.1:%d/hello"):format(port))
    server.wait_line("(127%.0%.0%.1: handshake[^\n]*)")
    -- tls_client.lua: verified, the answer printed; an untrusted server refused
    out = H.capture(("timeout 20 %s examples/tls_client.lua --cafile %sca.pem localhost %d "
      .. "'GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n'"):format(H.LUA, D, port))
    assert.matches("TLSv1%.3 [%w_]+, certificate of CN=localhost issued by CN=Test CA", out)
    assert.matches("Hello, world!$", out)
    out = H.capture(("timeout 20 %s examples/tls_client.lua localhost %d 2>&1; echo status $?"):format(H.LUA, port))
    assert.matches("tls_client.lua: localhost:%d+: handshake: certificate verify failed", out)
    assert.matches("status 1", out)
    -- our client: https directly, and through a redirect from a plain http server
    out = H.capture(("timeout 20 %s examples/http_client.lua --cafile %sca.pem https://localhost:%d/page.txt")
      :format(H.LUA, D, port))
    assert.matches("HTTP/1%.1 200 OK", out)
    assert.matches("body: 11 bytes", out)
    local rport = free_port()
    start(([[python3 -c "
import http.server
class R(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(301)
        self.send_header('Location', 'https://localhost:%d/page.txt')
        self.send_header('Content-Length', '0')
        self.end_headers()
http.server.HTTPServer(('127.0.0.1', %d), R).serve_forever()
"]]):format(port, rport))
    wait_port(rport)
    out = H.capture(("timeout 20 %s examples/http_client.lua --cafile %sca.pem http://127.0.0.1:%d/")
      :format(H.LUA, D, rport))
    assert.matches("301 Moved Permanently %-> redirected to https://localhost:" .. port .. "/page.txt", out)
    assert.matches("body: 11 bytes", out)
    -- without the CA: the certificate is not trusted, and nothing is printed as the body
    out = H.capture(("timeout 20 %s examples/http_client.lua https://localhost:%d/page.txt"):format(H.LUA, port))
    assert.matches("CERTIFICATE_VERIFY_FAILED", out)
    assert.not_matches("200 OK", out)
    os.execute("rm -rf " .. dir)
  end)

  it("http_server.lua drops a slowloris client after its idle timeout (--idle), and serves the rest", function()
    local port = free_port()
    start(("%s examples/http_server.lua --idle 0.5 127.0.0.1 %d"):format(H.LUA, port))
    wait_port(port)
    local slow = asyncore.socket()
    slow:connect { "127.0.0.1", port }
    H.run_for(0.1)
    slow:send("GET /hello HTTP/1.1\r\nHost: x\r\n")   -- and never the blank line
    local t0 = asyncore.now()
    local got = H.read_to_eof(slow, 5)
    local waited = asyncore.now() - t0
    slow:close()
    assert.equal("", got)
    assert.is_true(waited >= 0.3 and waited < 3, "dropped after " .. waited)
    local out = H.capture(("timeout 20 env -u LD_PRELOAD curl -sS http://127.0.0.1:%d/hello"):format(port))
    assert.equal("Hello, world!", out)
  end)

  it("line_client.lua and http_client.lua --timeout give up a connect that hangs", function()
    local port, release = H.hanging_port()
    local out = H.capture(("timeout 20 %s examples/line_client.lua --timeout 0.5 127.0.0.1 %d hi 2>&1; echo status $?")
      :format(H.LUA, port))
    assert.matches("no connection after 0%.5s", out)
    assert.matches("status 1", out)
    out = H.capture(("timeout 20 %s examples/http_client.lua --timeout 0.5 http://127.0.0.1:%d/ 2>&1; echo status $?")
      :format(H.LUA, port))
    assert.matches("connect timeout %(0%.5s%)", out)
    assert.matches("status 1", out)
    release()
  end)

  it("smtp_sink.lua stores mail sent with Python's smtplib", function()
    local port = free_port()
    local dir = os.tmpname()
    os.remove(dir)
    local server = start(("%s examples/smtp_sink.lua 127.0.0.1 %d %s"):format(H.LUA, port, dir))
    server.wait_line("smtp sink on")
    local out = H.capture(([[timeout 20 python3 -c "
import smtplib
from email.message import EmailMessage
m = EmailMessage()
m['From'] = 'alice@example.org'
m['To'] = 'bob@example.org'
m['Subject'] = 'greetings'
m.set_content('first line\n.a line with a leading dot\nlast line\n')
with smtplib.SMTP('127.0.0.1', %d) as s:
    s.send_message(m)
print('sent')
"]]):format(port))
    assert.matches("sent", out)
    local mail = stored_mail(server)
    assert.matches("X%-Envelope%-From: alice@example%.org", mail)
    assert.matches("X%-Envelope%-To: bob@example%.org", mail)
    assert.matches("Subject: greetings", mail)
    assert.matches("\r?\n%.a line with a leading dot\r?\n", mail)
    os.execute("rm -rf " .. dir)
  end)
end)
