-- Shared helpers for the specs: bounded loops, free ports, descriptor counts,
-- and child processes (Python peers, example scripts) with a time limit.
local asyncore = require "asyncore"

local H = {}

H.LUA = os.getenv("AC_LUA") or "lua5.4"
H.ROOT = os.getenv("PWD") or "."

--- Drive the loop until pred() is true; fail after `seconds` (default 5).
-- opts: map, backend, timeout (per pass, default 0.01)
function H.run_until(pred, seconds, opts)
  seconds = seconds or 5
  opts = opts or {}
  local deadline = asyncore.Object and require("asyncore.core").now() + seconds
  local now = require("asyncore.core").now
  while not pred() do
    if now() > deadline then
      error(("timed out after %gs"):format(seconds), 2)
    end
    asyncore.loop { timeout = opts.timeout or 0.01, count = 1, map = opts.map, backend = opts.backend }
  end
end

--- Run the loop for about `seconds`, whatever happens.
function H.run_for(seconds, opts)
  local now = require("asyncore.core").now
  local deadline = now() + seconds
  opts = opts or {}
  while now() < deadline do
    asyncore.loop { timeout = 0.01, count = 1, map = opts.map, backend = opts.backend }
  end
end

function H.now() return require("asyncore.core").now() end

--- Number of open descriptors of this process, counted without spawning a
-- process (a popen'ed `ls` raced with the pipe popen itself opens). Opening
-- /proc/self/fdinfo/N succeeds exactly when descriptor N is open: the
-- descriptor the open itself takes is not yet installed while the path is
-- looked up. Descriptors from 4096 up are not counted (valgrind keeps its own
-- near the top of the table; no spec opens that many).
function H.fd_count()
  local size = 4096
  local st = io.open("/proc/self/status")
  if st then
    for line in st:lines() do
      local n = line:match("^FDSize:%s*(%d+)")
      if n then size = math.min(size, tonumber(n)) break end
    end
    st:close()
  end
  local n = 0
  for fd = 0, size - 1 do
    local f = io.open("/proc/self/fdinfo/" .. fd)
    if f then
      f:close()
      n = n + 1
    end
  end
  return n
end

--- Is the socket object closed? (every method of a closed socket but close
-- raises, fileno included)
function H.closed(sock)
  return tostring(sock) == "asyncore.socket (closed)" and not pcall(sock.fileno, sock)
end

--- A listening stream socket on a free loopback port: sock, port.
function H.listener(family, host)
  local s = asyncore.socket(family or "inet", "stream")
  s:setsockopt("reuseaddr", true)
  s:bind { host or "127.0.0.1", 0 }
  s:listen(16)
  return s, s:getsockname()[2]
end

--- Accept one connection on the raw listener `l` (waiting up to `seconds`,
-- default 5, without driving the loop), then close the listener.
function H.accept_one(l, seconds)
  local sock
  local deadline = H.now() + (seconds or 5)
  repeat sock = l:accept() until sock or H.now() > deadline
  l:close()
  assert(sock, "no connection")
  return sock
end

--- A loopback connection whose accepted (server) side becomes a channel
-- `Cls(sock, ...)`: returns the channel and the raw peer socket (blocking).
function H.pair(Cls, ...)
  local l, port = H.listener()
  local peer = asyncore.socket()
  peer:connect { "127.0.0.1", port }
  local sock = H.accept_one(l)
  peer:setblocking(true)
  return Cls(sock, ...), peer
end

--- A listening channel on a free loopback port that calls
-- `on_accept(sock, addr)` for each connection: returns it and its port.
function H.serve(on_accept)
  local S = asyncore.dispatcher:extend()
  function S:handle_accepted(sock, addr) on_accept(sock, addr) end
  local s = S()
  s:create_socket()
  s:set_reuse_addr()
  s:bind { "127.0.0.1", 0 }
  s:listen(16)
  return s, s.socket:getsockname()[2]
end

--- An echo server of dispatchers (dispatcher_with_send) on a free loopback
-- port: returns the port.
function H.echo_server()
  local Echo = asyncore.dispatcher_with_send:extend()
  function Echo:handle_read()
    local d = self:recv(65536)
    if #d > 0 then self:send(d) end
  end
  local _, port = H.serve(function(sock) Echo(sock) end)
  return port
end

--- Read the raw non-blocking socket `peer` until the end of stream, driving
-- the loop meanwhile; returns everything it read.
function H.read_to_eof(peer, seconds)
  local got = {}
  H.run_until(function()
    local d = peer:recv(1 << 20)
    while d and #d > 0 do got[#got + 1] = d; d = peer:recv(1 << 20) end
    return d == ""
  end, seconds or 60)
  return table.concat(got)
end

--- Read the raw non-blocking socket `peer` until `n` bytes came, driving the
-- loop meanwhile; returns what it read (opts as for run_until).
function H.read_n(peer, n, seconds, opts)
  local got = ""
  H.run_until(function()
    local d = peer:recv(65536)
    if d then got = got .. d end
    return #got >= n
  end, seconds or 5, opts)
  return got
end

--- A fresh path for a Unix socket.
function H.tmpname()
  local n = os.tmpname()
  os.remove(n)
  return n
end

--- Is ::1 usable here?
function H.have_ipv6()
  local ok = pcall(function()
    local s = asyncore.socket("inet6", "stream")
    s:bind { "::1", 0 }
    s:close()
  end)
  return ok
end

--- The first child process of pid, once it has one (waits at most 5 s).
function H.child_of(pid)
  local p
  H.run_until(function()
    local f = io.open("/proc/" .. tostring(pid) .. "/task/" .. tostring(pid) .. "/children")
    p = f and f:read("n")
    if f then f:close() end
    return p ~= nil
  end, 5)
  return p
end

--- Start a command in the background with a time limit; its stdout goes to a
-- file. Returns a handle with :wait_line(pattern, seconds), :output(), :kill().
function H.spawn(cmd, limit)
  local out = os.tmpname()
  local pidfile = os.tmpname()
  local full = ("sh -c 'echo $$ > %s; exec timeout -k 2 %d %s' > %s 2>&1 &")
    :format(pidfile, limit or 30, cmd:gsub("'", "'\\''"), out)
  os.execute(full)
  local h = { out = out }
  --- The pid of the command itself (the child of `timeout`), once it runs.
  function h.child_pid() return H.child_of(h.pid()) end
  function h.pid()
    local f = io.open(pidfile)
    local p = f and f:read("n")
    if f then f:close() end
    return p
  end
  function h.output()
    local f = io.open(out)
    local s = f and f:read("a") or ""
    if f then f:close() end
    return s
  end
  --- Wait (driving the loop) until the output matches pattern; returns the capture.
  function h.wait_line(pattern, seconds)
    local cap
    H.run_until(function()
      cap = h.output():match(pattern)
      return cap ~= nil
    end, seconds or 10)
    return cap
  end
  --- Is it still running? A zombie is not: the process that reaps the
  -- orphan (init here) may take a second to do so.
  function h.running()
    local p = h.pid()
    local f = p and io.open("/proc/" .. p .. "/stat")
    if not f then return false end
    local stat = f:read("a")
    f:close()
    local state = stat:match("^%d+ %(.*%) (%a)")
    return state ~= nil and state ~= "Z" and state ~= "X"
  end
  --- Wait until the process has exited (driving the loop meanwhile).
  function h.wait_exit(seconds)
    H.run_until(function() return not h.running() end, seconds or 10)
  end
  function h.kill()
    local p = h.pid()
    if p then os.execute("kill " .. p .. " 2>/dev/null") end
    os.remove(pidfile)
  end
  return h
end

--- A free TCP port on 127.0.0.1 (bound, then released: for a child to listen on).
function H.free_port()
  local s = require("asyncore").socket("inet")
  s:setsockopt("reuseaddr", true)
  s:bind { "127.0.0.1", 0 }
  local port = s:getsockname()[2]
  s:close()
  return port
end

--- A shell command's output (blocking; for quick commands only).
function H.capture(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local s = p:read("a")
  p:close()
  return s
end

--- Throw-away certificates, made once per run with the openssl program (no
-- key is kept in the repository): returns the directory, holding ca.pem;
-- server.pem/.key (localhost, 127.0.0.1), other.pem/.key (other.test),
-- client.pem/.key, all signed by ca; rogue.pem/.key (localhost) signed by
-- rogue-ca.pem, which nobody trusts.
local certdir
function H.tls_certs()
  if certdir then return certdir end
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local script = [[
set -e
cd "$1"
ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$2" \
    -keyout $1.key -out $1.pem -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
}
leaf() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" -keyout $1.key -out $1.csr
  printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n" "$3" > $1.ext
  openssl x509 -req -in $1.csr -CA $4.pem -CAkey $4.key -CAcreateserial -days 2 -out $1.pem -extfile $1.ext
}
ca ca "Test CA"
ca rogue-ca "Rogue CA"
leaf server localhost "DNS:localhost,IP:127.0.0.1" ca
leaf other other.test "DNS:other.test" ca
leaf client client "DNS:client" ca
leaf rogue localhost "DNS:localhost,IP:127.0.0.1" rogue-ca
]]
  local f = assert(io.open(dir .. "/make.sh", "w"))
  f:write(script)
  f:close()
  assert(os.execute("sh " .. dir .. "/make.sh " .. dir .. " >" .. dir .. "/make.log 2>&1"),
    "openssl could not make the test certificates")
  certdir = dir .. "/"
  return certdir
end

--- A port whose connects hang: a listener that never accepts, its queue
-- filled, so the kernel drops further SYNs. Returns the port and a function
-- that closes it all.
function H.hanging_port()
  local l = asyncore.socket()
  l:bind { "127.0.0.1", 0 }
  l:listen(0)
  local port = l:getsockname()[2]
  local fillers = {}
  for i = 1, 4 do
    fillers[i] = asyncore.socket()
    fillers[i]:connect { "127.0.0.1", port }
  end
  return port, function()
    for _, f in ipairs(fillers) do f:close() end
    l:close()
  end
end

--- Close everything and check the map is empty.
function H.cleanup()
  asyncore.close_all()
end

--- A byte string of n pseudo-random bytes (deterministic).
function H.blob(n, seed)
  local t = {}
  local x = seed or 12345
  local chunk = {}
  for i = 1, 4096 do
    x = (x * 1103515245 + 12345) % 2147483648
    chunk[i] = string.char(x % 256)
  end
  chunk = table.concat(chunk)
  for i = 1, n // 4096 do t[i] = chunk end
  t[#t + 1] = chunk:sub(1, n % 4096)
  return table.concat(t)
end

return H
