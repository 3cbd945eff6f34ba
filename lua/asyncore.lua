--- lua-asyncore: Python's asyncore for Lua 5.4, with the event loop in C.
--
-- This module is the thin Lua layer: the classes (`dispatcher`,
-- `dispatcher_with_send`, `file_dispatcher`), their default handlers, and the
-- loop entry points. System calls, buffering, the poll backends and the
-- timers live in the C core (`asyncore.core`); the methods that run on every
-- event (`recv`, `send`, the stock predicates and event handlers) are C
-- functions stored straight into the classes.
--
-- Handlers run under a protected call from C: they cannot yield (a handler is
-- not a coroutine), and an error in one goes to that channel's
-- `handle_error(err, traceback)` while the loop keeps serving the others.
local core = require "asyncore.core"
local Object = require "asyncore.class"

local type, tostring, pcall, error, pairs, ipairs, getmetatable, setmetatable =
  type, tostring, pcall, error, pairs, ipairs, getmetatable, setmetatable
local io_type, io_stderr, print = io.type, io.stderr, print
-- the library's own fields go in with rawset: no dispatcher.__newindex call
local rawset = rawset
local format, concat = string.format, table.concat

local M = {}
M._VERSION = core._VERSION

M.AF_INET, M.AF_INET6, M.AF_UNIX = core.AF_INET, core.AF_INET6, core.AF_UNIX
M.SOCK_STREAM, M.SOCK_DGRAM = core.SOCK_STREAM, core.SOCK_DGRAM

--- The global map: fd -> channel. Channels add themselves and leave on close.
M.socket_map = {}

--- Raise it (`error(asyncore.ExitNow)`) in a callback to leave `loop()`.
M.ExitNow = setmetatable({}, {
  __name = "asyncore.ExitNow",
  __tostring = function() return "asyncore.ExitNow" end,
})

core.init(M, M.socket_map, M.ExitNow)

M.socket = core.socket
M.is_error = core.is_error
M.backends = core.backends
M.call_later = core.call_later
M.call_every = core.call_every
--- `realpath(path)`: the canonical absolute path, or nil and an error table.
M.realpath = core.realpath
--- The monotonic clock of the timers, in seconds (a float): `timer.deadline` is on it.
M.now = core.now
M.Object = Object
--- `tls_context(opts)`: a TLS configuration for `start_tls` (OpenSSL).
M.tls_context = core.tls_context
--- The OpenSSL the core was built with, e.g. "OpenSSL 3.0.19 ...".
M.tls_library = core.tls_library

--- Where an error in a timer callback goes; a script may replace it.
function M.handle_timer_error(err, traceback)
  io_stderr:write(format("error: uncaught error in timer callback: %s\n%s\n",
    tostring(err), traceback or ""))
end

local socket_mt = core._socket_mt
local function is_socket(v) return getmetatable(v) == socket_mt end

local function argerror(n, fname, msg, level)
  error(format("bad argument #%d to '%s' (%s)", n, fname, msg), (level or 2) + 1)
end

local function checkmap(map, n, fname)
  if map ~= nil and type(map) ~= "table" then
    argerror(n, fname, "table expected, got " .. type(map), 2)
  end
  return map
end

---------------------------------------------------------------------------
-- the loop
---------------------------------------------------------------------------

--- Run passes until `count` are done, or the map is empty and no timer is
-- pending. `loop(timeout, use_poll, map, count)` or
-- `loop{timeout=, use_poll=, map=, count=, backend=}`.
function M.loop(timeout, use_poll, map, count)
  local backend
  if type(timeout) == "table" then
    local o = timeout
    timeout, use_poll, map, count, backend = o.timeout, o.use_poll, o.map, o.count, o.backend
  end
  if timeout == nil then timeout = 30.0 end
  if type(timeout) ~= "number" then argerror(1, "loop", "timeout: number expected, got " .. type(timeout)) end
  if timeout < 0 then argerror(1, "loop", "timeout must be >= 0") end
  checkmap(map, 3, "loop")
  if count ~= nil and math.type(count) ~= "integer" then
    argerror(4, "loop", "count: integer expected, got " .. type(count))
  end
  if backend ~= nil and type(backend) ~= "string" then
    argerror(1, "loop", "backend: string expected, got " .. type(backend))
  end
  if count ~= nil and count <= 0 then return end
  if backend == nil then backend = use_poll and "poll" or "auto" end
  map = map or M.socket_map
  core.loop(map, timeout, count, backend)
  core._after_loop(map)
end

local function one_pass(backend, fname)
  return function(timeout, map)
    if timeout == nil then timeout = 0.0 end
    if type(timeout) ~= "number" or timeout < 0 then
      argerror(1, fname, "number >= 0 expected, got " .. tostring(timeout))
    end
    checkmap(map, 2, fname)
    return core.loop(map or M.socket_map, timeout, 1, backend, true)
  end
end

--- One pass with select(); `poll2`/`poll3`: one pass with poll().
M.poll = one_pass("select", "poll")
M.poll2 = one_pass("poll", "poll2")
M.poll3 = M.poll2

--- Close every channel of the map (default: socket_map) and empty it.
function M.close_all(map, ignore_all)
  map = checkmap(map, 1, "close_all") or M.socket_map
  local chans = {}
  for _, ch in pairs(map) do chans[#chans + 1] = ch end
  for _, ch in ipairs(chans) do
    local ok, err = pcall(ch.close, ch)
    if not ok then
      if err == M.ExitNow or not (ignore_all or M.is_error(err, "EBADF")) then
        error(err, 0)
      end
    end
  end
  for k in pairs(map) do map[k] = nil end
  core.release_map(map)      -- the map's epoll/kqueue descriptor too
end

---------------------------------------------------------------------------
-- dispatcher
---------------------------------------------------------------------------

local dispatcher = Object:extend()
dispatcher.__name = "asyncore.dispatcher"
dispatcher.debug = false
dispatcher.connected = false
dispatcher.accepting = false
dispatcher.connecting = false
dispatcher.closing = false
dispatcher.addr = nil
dispatcher.ignore_log_types = { warning = true }
-- flow control: the marks of the classes that queue output (bytes; false: none)
dispatcher.write_high_water = 1024 * 1024
dispatcher.write_low_water = 256 * 1024
-- end of stream -> handle_read_eof() (true) or handle_close() (false, Python's way)
dispatcher.allow_half_open = false

local C = core.dispatcher
for _, name in ipairs { "recv", "send", "accept", "readable", "writable", "handle_read_event",
  "handle_write_event", "handle_accept", "handle_connect_event", "fileno" } do
  dispatcher[name] = C[name]
end
--- pause_reading(), resume_reading(), reading_paused(); the default
-- handle_pause_writing / handle_resume_writing (the server side pauses its
-- reading while its queued output is above write_high_water)
for name, fn in pairs(core.flow) do dispatcher[name] = fn end
dispatcher.add_channel = core.add_channel
dispatcher.del_channel = core.del_channel
-- fields new to an instance are stored as usual; a predicate or event method
-- set on a live channel is noticed by the loop at once
dispatcher.__newindex = core.chan_newindex
local update_interest = core.update_interest
local tls_numeric_host = core.tls_numeric_host
local tls_context_mt = core._tls_context_mt
local chat_release = core.chat.chat_release

local apply_timeouts   -- below: arms a channel's timeouts when a socket joins
local connect_by_name  -- below: connect{"name", port}
local start_tls_now    -- below: TLS on the channel's socket, now
local name_connect_done -- below: a name connect is over (or abandoned)
local core_set_timeout = core.set_timeout

-- the timeouts in effect: the instance's own settings over the class's `timeouts`
local function timeout_of(self, kind)
  local own = rawget(self, "_timeouts")
  if own and own[kind] ~= nil then return own[kind] or nil end
  local cls = self.timeouts
  return type(cls) == "table" and cls[kind] or nil
end

local function sockof(self, fname)
  local s = self.socket
  if s == nil then error(format("%s: the dispatcher has no socket", fname), 3) end
  return s
end

--- `dispatcher(sock, map)`: both optional. With a socket (say from accept),
-- it is made non-blocking, the channel joins the map, and `connected` and
-- `addr` come from its peer.
function dispatcher:init(sock, map)
  if map ~= nil then
    checkmap(map, 2, "dispatcher")
    rawset(self, "_map", map)
  end
  if sock ~= nil then
    if not is_socket(sock) then
      argerror(1, "dispatcher", "asyncore.socket expected, got " .. type(sock))
    end
    sock:setblocking(false)
    self:set_socket(sock, map)
    rawset(self, "connected", true)
    local ok, addr = pcall(sock.getpeername, sock)
    if ok then
      rawset(self, "addr", addr)
    elseif M.is_error(addr, "ENOTCONN") or M.is_error(addr, "EINVAL") then
      rawset(self, "connected", false)          -- an unconnected socket
    else
      self:del_channel(map)
      error(addr, 0)
    end
    update_interest(self)             -- writable() may depend on `connected`
  end
end

function dispatcher:__tostring()
  local cls = getmetatable(self)
  local status = { cls and cls.__name or "dispatcher" }
  if self.accepting and self.addr then
    status[#status + 1] = "listening"
  elseif self.connected then
    status[#status + 1] = "connected"
  end
  local a = self.addr
  if a ~= nil then
    if type(a) == "table" then
      status[#status + 1] = format("%s:%s", tostring(a[1]), tostring(a[2]))
    else
      status[#status + 1] = tostring(a)
    end
  end
  return format("<%s at %p>", concat(status, " "), self)
end

--- Create the channel's socket (default AF_INET, SOCK_STREAM) and join the map.
function dispatcher:create_socket(family, stype)
  local sock = core.socket(family, stype)
  rawset(self, "family_and_type", { family or M.AF_INET, stype or M.SOCK_STREAM })
  self:set_socket(sock)
end

function dispatcher:set_socket(sock, map)
  if not is_socket(sock) then
    argerror(1, "set_socket", "asyncore.socket expected, got " .. type(sock))
  end
  checkmap(map, 2, "set_socket")
  rawset(self, "socket", sock)
  self:add_channel(map)
  apply_timeouts(self)
end

--- Allow a server to re-bind its port at once (SO_REUSEADDR); errors are ignored.
function dispatcher:set_reuse_addr()
  local s = sockof(self, "set_reuse_addr")
  pcall(s.setsockopt, s, "reuseaddr", true)
end

function dispatcher:listen(num)
  local s = sockof(self, "listen")
  rawset(self, "accepting", true)
  local r = s:listen(num)
  update_interest(self)
  return r
end

function dispatcher:bind(addr, port)
  local s = sockof(self, "bind")
  local r = s:bind(addr, port)
  if port ~= nil then addr = { addr, port } end
  rawset(self, "addr", addr)
  return r
end

--- Start a non-blocking connect; `handle_connect` runs when it completes.
function dispatcher:connect(addr, port)
  local host = port ~= nil and addr or type(addr) == "table" and addr[1]
  if type(host) == "string" and (port ~= nil or type(addr) == "table") and not tls_numeric_host(host) then
    local p = port or addr[2]
    if math.type(p) ~= "integer" or p < 0 or p > 65535 then
      argerror(1, "connect", "port: an integer 0-65535 expected, got " .. tostring(p))
    end
    return connect_by_name(self, host, p)
  end
  local s = sockof(self, "connect")
  rawset(self, "connected", false)
  rawset(self, "connecting", true)
  local done = s:connect(addr, port)
  if port ~= nil then addr = { addr, port } end
  rawset(self, "addr", addr)
  -- the name TLS checks by default: the host given, when it is a name
  local host = type(addr) == "table" and addr[1]
  if type(host) == "string" and not tls_numeric_host(host) then
    rawset(self, "_connect_host", host)
  end
  if done then
    self:handle_connect_event()
  else
    update_interest(self)
    local t = timeout_of(self, "connect")
    if t then core_set_timeout(self, "connect", t) end
  end
  local later = rawget(self, "_tls_later")
  if later then   -- start_tls was called before connect: what was queued since is not clear text
    rawset(self, "_tls_later", nil)
    local o = later[2]
    start_tls_now(self, later[1], o and o.server_hostname or rawget(self, "_connect_host"), true)
  end
end

local function check_seconds(seconds, n, fname)
  if seconds == nil or seconds == false then return nil end
  if type(seconds) ~= "number" or seconds ~= seconds or seconds <= 0 or seconds == math.huge then
    argerror(n, fname, "seconds: a positive number, or nil to disarm, expected, got " .. tostring(seconds), 3)
  end
  return seconds
end

---------------------------------------------------------------------------
-- names: resolution that never blocks (c-ares), connect by name
---------------------------------------------------------------------------

local resolve_start, resolve_cancel, resolve_failure =
  core.resolve_start, core.resolve_cancel, core.resolve_failure
local lookups = {}   -- id -> {fn =, host =, timer =}
local ARES_ENODATA, ARES_ETIMEOUT = 1, 12

local Lookup = {}
Lookup.__index = Lookup
Lookup.__name = "asyncore.lookup"
--- Cancel a lookup: its callback is never called.
function Lookup:cancel()
  self.cancelled = true
  if self.timer then self.timer:cancel() end
  local id = self.id
  if id and lookups[id] then
    if lookups[id].timer then lookups[id].timer:cancel() end
    lookups[id] = nil
    resolve_cancel(id)
  end
end

local function callback_error(err)
  if err == M.ExitNow then return err end
  return { err = err, tb = debug.traceback(nil, 2) }
end

-- run a callback from the loop (a lookup's answer, a signal's handler): an
-- error is reported like a timer's; ExitNow and Ctrl-C leave the loop
local function run_callback(fn, addrs, err)
  local ok, e = xpcall(fn, callback_error, addrs, err)
  if not ok then
    if e == M.ExitNow or type(e) ~= "table" or e.tb == nil then error(e, 0) end
    M.handle_timer_error(e.err, e.tb)
  end
end

core.resolve_init(function(id, addrs, status)
  local l = lookups[id]
  if not l then return end
  lookups[id] = nil
  if l.timer then l.timer:cancel() end
  local err = nil
  if addrs == nil then err = resolve_failure(status, l.host) end
  run_callback(l.fn, addrs, err)
end)

local FAMILIES = { inet = M.AF_INET, inet6 = M.AF_INET6 }

-- numeric addresses and "localhost" answer without a query
local function answer_at_once(host, family)
  local list
  if tls_numeric_host(host) then
    list = { { host = host, family = host:find(":", 1, true) and "inet6" or "inet" } }
  elseif host:lower() == "localhost" then
    list = { { host = "127.0.0.1", family = "inet" }, { host = "::1", family = "inet6" } }
  else
    return nil
  end
  local r = {}
  for _, a in ipairs(list) do
    if family == nil or a.family == family then r[#r + 1] = a end
  end
  return r
end

--- `resolve(host, fn [, opts])`: looks host up without blocking; later, from
-- the loop, calls `fn(addrs)` (a list of `{host = "ip", family = "inet" or
-- "inet6"}`) or `fn(nil, err)`. opts: family ("inet"/"inet6"), timeout
-- (seconds per try), tries. Returns a handle with :cancel().
function M.resolve(host, fn, opts)
  if type(host) ~= "string" or host == "" then
    argerror(1, "resolve", "host name expected, got " .. (host == "" and "an empty string" or type(host)))
  end
  if type(fn) ~= "function" then argerror(2, "resolve", "function expected, got " .. type(fn)) end
  if opts ~= nil and type(opts) ~= "table" then argerror(3, "resolve", "table expected, got " .. type(opts)) end
  local family, timeout, tries
  if opts then
    for k in pairs(opts) do
      if k ~= "family" and k ~= "timeout" and k ~= "tries" then
        argerror(3, "resolve", "unknown option '" .. tostring(k) .. "'")
      end
    end
    family = opts.family
    if family ~= nil and not FAMILIES[family] then
      argerror(3, "resolve", "family: \"inet\" or \"inet6\" expected, got " .. tostring(family))
    end
    timeout = check_seconds(opts.timeout, 3, "resolve")
    tries = opts.tries
    if tries ~= nil and (math.type(tries) ~= "integer" or tries < 1) then
      argerror(3, "resolve", "tries: a positive integer expected, got " .. tostring(tries))
    end
  end
  local handle = setmetatable({ host = host }, Lookup)
  local now = answer_at_once(host, family)
  if now then
    handle.timer = M.call_later(0, function()
      if #now == 0 then
        run_callback(fn, nil, resolve_failure(ARES_ENODATA, host))
      else
        run_callback(fn, now)
      end
    end)
    return handle
  end
  local id = resolve_start(host, family and FAMILIES[family] or nil)
  handle.id = id
  local l = { fn = fn, host = host }
  lookups[id] = l
  if timeout then
    l.timer = M.call_later(timeout * (tries or 1), function()
      if lookups[id] == l then
        lookups[id] = nil
        resolve_cancel(id)
        run_callback(fn, nil, resolve_failure(ARES_ETIMEOUT, host))
      end
    end)
  end
  return handle
end

--- `set_resolver{servers = {"127.0.0.1:5353", ...}, timeout =, tries =}`: the
-- name servers to ask (and how long, how often); `set_resolver()`: the system's.
function M.set_resolver(opts)
  if opts == nil then return core.set_resolver() end
  if type(opts) ~= "table" then argerror(1, "set_resolver", "table expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if k ~= "servers" and k ~= "timeout" and k ~= "tries" then
      argerror(1, "set_resolver", "unknown option '" .. tostring(k) .. "'")
    end
  end
  local servers = opts.servers
  local csv
  if servers ~= nil then
    if type(servers) ~= "table" or #servers == 0 then
      argerror(1, "set_resolver", "servers: a list of \"ip[:port]\" strings expected")
    end
    for i, v in ipairs(servers) do
      if type(v) ~= "string" or v:find(",", 1, true) then
        argerror(1, "set_resolver", "servers[" .. i .. "]: \"ip[:port]\" expected, got " .. tostring(v))
      end
    end
    csv = concat(servers, ",")
  end
  local timeout = check_seconds(opts.timeout, 1, "set_resolver")
  local tries = opts.tries
  if tries ~= nil and (math.type(tries) ~= "integer" or tries < 1) then
    argerror(1, "set_resolver", "tries: a positive integer expected, got " .. tostring(tries))
  end
  core.set_resolver(csv, timeout and math.max(1, math.floor(timeout * 1000 + 0.5)) or nil, tries)
end

-- the family of a socket, from its local address
local function socket_family(s)
  local ok, a = pcall(s.getsockname, s)
  if ok and type(a) == "table" then return tostring(a[1]):find(":", 1, true) and "inet6" or "inet" end
  return nil
end

name_connect_done = function(self, nc)
  if rawget(self, "_name_connect") == nc then
    rawset(self, "_name_connect", nil)
    rawset(self, "handle_connect_event", nil)
  end
  if nc.timer then nc.timer:cancel() end
  if nc.lookup then nc.lookup:cancel() end
end

local function name_connect_fail(self, nc, err)
  name_connect_done(self, nc)
  return self:handle_error(err, "")
end

local try_next

-- handle_connect_event while connecting by name: a failed address gives way
-- to the next one
local function name_connect_event(self)
  local nc = rawget(self, "_name_connect")
  local ok, err = pcall(C.handle_connect_event, self)
  if ok then
    if nc and not self.connecting then name_connect_done(self, nc) end
    return
  end
  if nc and M.is_error(err) and err.op == "connect" and self.connecting and nc.i < #nc.addrs then
    nc.last_err = err
    return try_next(self, nc)
  end
  if nc then name_connect_done(self, nc) end
  error(err, 0)
end

try_next = function(self, nc)
  while true do
    nc.i = nc.i + 1
    local a = nc.addrs[nc.i]
    if a == nil then
      return name_connect_fail(self, nc, nc.last_err or resolve_failure(ARES_ENODATA, nc.host))
    end
    local s = self.socket
    local idle = nc.idle_socket
    nc.idle_socket = nil
    if s ~= nil and s == idle and not nc.used and socket_family(s) == a.family then
      self:add_channel()              -- the channel's own socket, back in the poller
    else
      local old = s
      if old ~= nil then self:del_channel() end
      self:create_socket(FAMILIES[a.family])
      s = self.socket
      if old ~= nil then
        core.move_output(old, s)      -- what was sent meanwhile goes to the new socket
        pcall(old.close, old)
      end
    end
    nc.used = true
    rawset(self, "addr", { a.host, nc.port })
    local ok, done = pcall(s.connect, s, { a.host, nc.port })
    if ok then
      rawset(self, "handle_connect_event", name_connect_event)
      if nc.tls then start_tls_now(self, nc.tls[1], nc.tls[2] or nc.host, true) end
      if done then return self:handle_connect_event() end
      return update_interest(self)
    end
    if not M.is_error(done) then error(done, 0) end
    nc.last_err = done            -- refused or unreachable at once: the next one
  end
end

connect_by_name = function(self, host, port)
  local prev = rawget(self, "_name_connect")
  if prev then name_connect_done(self, prev) end
  rawset(self, "connected", false)
  rawset(self, "connecting", true)
  rawset(self, "addr", { host, port })
  rawset(self, "_connect_host", host)
  local nc = { host = host, port = port, i = 0 }
  rawset(self, "_name_connect", nc)
  local later = rawget(self, "_tls_later")
  if later then
    rawset(self, "_tls_later", nil)
    local o = later[2]
    nc.tls = { later[1], o and o.server_hostname }
  end
  -- the connect timeout counts the lookup too
  local t = timeout_of(self, "connect")
  if t then
    nc.timer = M.call_later(t, function()
      if rawget(self, "_name_connect") == nc then
        name_connect_done(self, nc)
        if self.connecting then self:handle_timeout("connect") end
      end
    end)
  end
  local s = self.socket
  local family = nil
  if s ~= nil and not pcall(s.fileno, s) then s = nil end   -- closed
  if s ~= nil then
    family = socket_family(s)
    -- out of the poller until an address is tried; output queues meanwhile
    self:del_channel()
    core.mark_connecting(s, true)
    nc.idle_socket = s
  end
  nc.lookup = M.resolve(host, function(addrs, err)
    nc.lookup = nil
    if rawget(self, "_name_connect") ~= nc then return end
    if not addrs then return name_connect_fail(self, nc, err) end
    nc.addrs = addrs
    return try_next(self, nc)
  end, { family = family })
end

---------------------------------------------------------------------------
-- timeouts
---------------------------------------------------------------------------

local TIMEOUT_KINDS = { connect = true, handshake = true, idle = true }



-- a socket joined: arm what is set (idle at once; connect and handshake
-- count from connect() and start_tls())
apply_timeouts = function(self)
  local idle = timeout_of(self, "idle")
  if idle then core_set_timeout(self, "idle", idle) end
end

--- Arm (seconds > 0) or disarm (nil, false) a timeout: "connect" (until
-- connect completes), "handshake" (until the TLS handshake completes),
-- "idle" (no byte received or sent for that long). Expiry calls
-- handle_timeout(kind).
function dispatcher:set_timeout(kind, seconds)
  if not TIMEOUT_KINDS[kind] then
    argerror(1, "set_timeout", "\"connect\", \"handshake\" or \"idle\" expected, got " .. tostring(kind))
  end
  seconds = check_seconds(seconds, 2, "set_timeout")
  local own = rawget(self, "_timeouts")
  if not own then
    own = {}
    rawset(self, "_timeouts", own)
  end
  own[kind] = seconds or false
  if C.fileno(self) == nil then return end       -- no open socket yet: armed when one joins
  if kind == "connect" and not self.connecting then seconds = nil end
  if kind == "handshake" and not rawget(self, "_tls_handshaking") then seconds = nil end
  core_set_timeout(self, kind, seconds)
end

-- the pass found a timeout expired: still relevant?
function dispatcher:_timeout_due(kind)
  if kind == "connect" and not self.connecting then return end
  if kind == "handshake" and (self.tls_info(self) or not rawget(self, "_tls_handshaking")) then return end
  self:handle_timeout(kind)
end

---------------------------------------------------------------------------
-- TLS
---------------------------------------------------------------------------

local tls_start, tls_info = core.tls.start_tls, core.tls.tls_info

start_tls_now = function(self, ctx, host, deferred)
  tls_start(self, ctx, host, deferred)
  rawset(self, "_tls_handshaking", true)
  local t = timeout_of(self, "handshake")
  if t then core_set_timeout(self, "handshake", t) end
end

--- Start TLS on the channel's connection (at once when connected, else when
-- the connection completes). `opts.server_hostname`: the name a client
-- checks and sends as SNI; default: the host name given to `connect`.
function dispatcher:start_tls(ctx, opts)
  if getmetatable(ctx) ~= tls_context_mt then
    argerror(1, "start_tls", "tls_context expected, got " .. type(ctx))
  end
  if opts ~= nil and type(opts) ~= "table" then
    argerror(2, "start_tls", "table expected, got " .. type(opts))
  end
  local host = opts and opts.server_hostname
  if host ~= nil and (type(host) ~= "string" or host == "") then
    argerror(2, "start_tls", "server_hostname: a non-empty string expected")
  end
  if opts then
    for k in pairs(opts) do
      if k ~= "server_hostname" then argerror(2, "start_tls", "unknown option '" .. tostring(k) .. "'") end
    end
  end
  local nc = rawget(self, "_name_connect")
  if nc then   -- the name is being resolved: TLS starts on the socket that connects
    nc.tls = { ctx, host }
    return
  end
  sockof(self, "start_tls")
  if not self.connected and not self.connecting and not self.accepting then
    -- not connected yet: TLS starts when connect() is called
    rawset(self, "_tls_later", { ctx, opts })
    return
  end
  start_tls_now(self, ctx, host or rawget(self, "_connect_host"))
end

--- `nil` before the TLS handshake completed; then a table: version, cipher,
-- alpn, server_name, peer_certificate, verified, resumed.
dispatcher.tls_info = tls_info

--- The TLS handshake completed (after `start_tls`).
function dispatcher:handle_handshake() end

function dispatcher:close()
  local nc = rawget(self, "_name_connect")
  if nc then name_connect_done(self, nc) end
  rawset(self, "connected", false)
  rawset(self, "accepting", false)
  rawset(self, "connecting", false)
  self:del_channel()
  -- async_chat's buffers go first: once the peer sees the end, they are freed
  if rawget(self, "_chat") ~= nil then chat_release(self) end
  local s = self.socket
  if s ~= nil then s:close() end          -- frees dispatcher_with_send's buffer too
end

function dispatcher:log(message)
  io_stderr:write("log: ", tostring(message), "\n")
end

function dispatcher:log_info(message, mtype)
  mtype = mtype or "info"
  local ignore = self.ignore_log_types
  if not (ignore and ignore[mtype]) then
    print(format("%s: %s", tostring(mtype), tostring(message)))
  end
end

local discard_urgent = core.discard_urgent

function dispatcher:handle_expt_event()
  local s = sockof(self, "handle_expt_event")
  if s:getsockopt("error") ~= 0 then
    self:handle_close()
  else
    self:handle_expt()
    -- an urgent byte left unread would fire this event on every pass
    discard_urgent(s)
  end
end

-- operating-system errors that end a connection in the ordinary way
local ROUTINE = { ECONNREFUSED = true, ECONNRESET = true, ETIMEDOUT = true, EHOSTUNREACH = true,
  ENETUNREACH = true, EHOSTDOWN = true, ENETDOWN = true, EPIPE = true, ECONNABORTED = true,
  ENOTCONN = true, ESHUTDOWN = true }

local function addr_text(a)
  if type(a) == "table" then
    local h = tostring(a[1])
    if h:find(":", 1, true) then h = "[" .. h .. "]" end
    return h .. ":" .. tostring(a[2])
  end
  return a ~= nil and tostring(a) or "(no address)"
end

--- An error escaped a handler. A routine end of a connection (refused, reset,
-- timed out, unreachable, broken pipe) is one line naming the peer; anything
-- else is logged with its traceback. Both end in handle_close().
function dispatcher:handle_error(err, traceback)
  if M.is_error(err) and (ROUTINE[err.code] or err.op == "handshake" or err.op == "resolve") then
    self:log_info(format("%s: %s", addr_text(rawget(self, "addr")), tostring(err)), "error")
    return self:handle_close()
  end
  local ok, repr = pcall(tostring, self)
  if not ok then repr = format("<__tostring failed for object at %p>", self) end
  self:log_info(format("uncaptured error, closing channel %s (%s)\n%s", repr,
    tostring(err), traceback or ""), "error")
  self:handle_close()
end

--- A timeout expired: the default logs a warning and closes the channel.
function dispatcher:handle_timeout(kind)
  self:log_info(format("%s: %s timeout (%gs), closing", addr_text(rawget(self, "addr")), kind,
    timeout_of(self, kind) or 0), "warning")
  self:close()
end

--- Urgent (out-of-band) data arrived: the default drops it and warns once.
function dispatcher:handle_expt()
  discard_urgent(sockof(self, "handle_expt"))
  if not rawget(self, "_expt_warned") then
    rawset(self, "_expt_warned", true)
    self:log_info("unhandled incoming priority event", "warning")
  end
end
function dispatcher:handle_read() self:log_info("unhandled read event", "warning") end
function dispatcher:handle_write() self:log_info("unhandled write event", "warning") end
function dispatcher:handle_connect() self:log_info("unhandled connect event", "warning") end

function dispatcher:handle_accepted(sock, addr)
  sock:close()
  self:log_info("unhandled accepted event", "warning")
end

function dispatcher:handle_close()
  self:log_info("unhandled close event", "warning")
  self:close()
end

--- The peer finished sending (only with allow_half_open): the default closes.
function dispatcher:handle_read_eof()
  self:close()
end

--- asyncore.shutdown() asks the channel to end: the default closes it.
function dispatcher:handle_shutdown()
  self:close()
end

M.dispatcher = dispatcher

---------------------------------------------------------------------------
-- dispatcher_with_send: send() never loses data (the buffer is in C)
---------------------------------------------------------------------------

local dispatcher_with_send = dispatcher:extend()
dispatcher_with_send.__name = "asyncore.dispatcher_with_send"
for name, fn in pairs(core.dispatcher_with_send) do dispatcher_with_send[name] = fn end

--- The peer finished sending (only with allow_half_open): what is queued is
-- sent, then the channel closes.
function dispatcher_with_send:handle_read_eof()
  self:close_when_done()
end

--- asyncore.shutdown(): what is queued is still sent, then the channel closes.
function dispatcher_with_send:handle_shutdown()
  self:close_when_done()
end
M.dispatcher_with_send = dispatcher_with_send

---------------------------------------------------------------------------
-- file_dispatcher: pipes, ttys, stdin
---------------------------------------------------------------------------

local file_dispatcher = dispatcher:extend()
file_dispatcher.__name = "asyncore.file_dispatcher"

--- `file_dispatcher(fd_or_file [, map])`: works on a duplicate of the descriptor.
function file_dispatcher:init(fd, map)
  dispatcher.init(self, nil, map)
  rawset(self, "connected", true)
  if io_type(fd) then
    fd = core.fileno_of(fd)
  elseif math.type(fd) ~= "integer" then
    argerror(1, "file_dispatcher", "file or descriptor expected, got " .. type(fd))
  end
  self:set_file(fd)
end

function file_dispatcher:set_file(fd)
  rawset(self, "socket", core.wrapfd(fd))
  self:add_channel()
end

M.file_dispatcher = file_dispatcher

-- tasks: spawn, sleep, join, cancel (lua/asyncore/tasks.lua)
core._run_callback = run_callback
core._tasks = require("asyncore.tasks")(M, core)
-- signals, shutdown, workers, embedding (lua/asyncore/service.lua)
require("asyncore.service")(M, core)

-- streams (lua/asyncore/streams.lua, loaded on first use: it builds on asynchat)
--- open_stream(host, port [, opts]): connects; a stream, or nil and an error.
function M.open_stream(...) return require("asyncore.streams").open_stream(...) end
--- serve(host, port, handler [, opts]): handler(stream, addr) as a task per connection.
function M.serve(...) return require("asyncore.streams").serve(...) end

return M
