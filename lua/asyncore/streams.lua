--- Streams: connections read and written by tasks, in sequential code.
--
-- A stream is an async_chat channel in stream mode (src/lchat.c): what it
-- reads is kept in the chat's C buffer. read, read_until, read_some and
-- write are C functions (src/lstream.c) that do the common case themselves
-- (a task reading, with or without a timeout, or writing, with no error) and
-- call the functions here for the rest: the top level of a script, errors, a
-- writer held while the queue is above write_high_water (its timeout a timer). The tasks
-- waiting on a stream are in C slots (core.stream_slot); the state the C
-- side checks (_err, _timeout, _wpaused) is mirrored there by `set`. TLS is
-- the channel's start_tls. One reader and one writer at a time (EBUSY).
--
-- Loaded by asyncore.open_stream / asyncore.serve on first use.
local asyncore = require "asyncore"
local asynchat = require "asynchat"
local core = require "asyncore.core"

local type, tostring, select, error, rawget, rawset, setmetatable, getmetatable =
  type, tostring, select, error, rawget, rawset, setmetatable, getmetatable
local format = string.format
local getinfo = debug and debug.getinfo   -- serve: does the handler take an address?
local T = core._tasks
local mode, suspend, wake = T.mode, T.suspend, T.wake
local task_spawn = core.task_spawn
local take, new_error = core.stream_take, core.new_error
local stream_flag, stream_slot, stream_wake = core.stream_flag, core.stream_slot, core.stream_wake
local now, call_later = asyncore.now, asyncore.call_later
local ETIMEDOUT, EBUSY, EMSGSIZE, ECONNRESET, EPIPE, EIO =
  core.ETIMEDOUT, core.EBUSY, core.EMSGSIZE, core.ECONNRESET, core.EPIPE, core.EIO

local function argerror(n, fname, msg)
  error(format("bad argument #%d to '%s' (%s)", n, fname, msg), 3)
end

local Stream = asynchat.async_chat:extend()
Stream.__name = "asyncore.stream"
Stream.allow_half_open = true        -- the end of the peer's data is a read's concern

-- `accepted`: sock came from accept() (serve): it is connected and the
-- handler gets its peer's address from accept, so the stream asks for no
-- address of its own (an idle served connection keeps no address table)
function Stream:init(sock, map, accepted)
  if accepted then
    asynchat.async_chat.init(self, nil, map)   -- its chat state and map, then the
    self:set_socket(sock, map)                 -- socket (no getpeername, no addr)
  else
    asynchat.async_chat.init(self, sock, map)
  end
  core.stream_mode(self)
end

local wake_slot = stream_wake

-- a field the C side checks too
local function set(self, k, v)
  rawset(self, k, v)
  stream_flag(self, k, v ~= nil)
end

local function wake_all(self)
  wake_slot(self, "_reader")
  wake_slot(self, "_writer")
  wake_slot(self, "_waiter")
end

-- channel events: they only record and wake
function Stream:found_terminator() end
function Stream:handle_read_eof() wake_slot(self, "_reader") end
function Stream:handle_connect() wake_slot(self, "_waiter") end
function Stream:handle_handshake() wake_slot(self, "_waiter") end
function Stream:handle_pause_writing() set(self, "_wpaused", true) end
function Stream:handle_resume_writing()
  set(self, "_wpaused", nil)
  wake_slot(self, "_writer")
end

function Stream:handle_write()
  self:initiate_send()
  if stream_slot(self, "_writer") and self:out_buffer_size() == 0 then wake_slot(self, "_writer") end
end

-- the connection ended without our asking (reset, refused, a failed
-- handshake): the error stays for the stream's calls
function Stream:handle_error(err, traceback)
  if rawget(self, "_err") == nil then
    set(self, "_err", asyncore.is_error(err) and err or new_error(EIO, "stream", tostring(err)))
  end
  if not asyncore.is_error(err) then
    self:log_info(format("uncaptured error on %s (%s)\n%s", tostring(self), tostring(err), traceback or ""), "error")
  end
  asyncore.dispatcher.close(self)
  wake_all(self)
end

function Stream:handle_close()
  if not rawget(self, "_closing") and rawget(self, "_err") == nil then
    set(self, "_err", new_error(ECONNRESET, "recv"))
  end
  asyncore.dispatcher.close(self)
  wake_all(self)
end

function Stream:handle_timeout(kind) self:handle_error(new_error(ETIMEDOUT, kind), nil) end

-- Wait in `slot` until woken: a task suspends (one wake), the top level runs
-- a pass. False once the deadline (monotonic seconds, or nil) has passed.
local function wait(self, slot, deadline, fname)
  local how, t = mode(fname)
  if how == "top" then
    local left = deadline and deadline - now()
    if left and left <= 0 then return false end
    asyncore.loop { timeout = left and math.min(left, 30) or 30, count = 1, map = rawget(self, "_map") }
    return not deadline or now() < deadline
  end
  local timer, fired
  if deadline then
    local left = deadline - now()
    if left <= 0 then return false end
    timer = call_later(left, function() fired = true; wake(t) end)
  end
  stream_slot(self, slot, true)
  suspend(function()
    stream_slot(self, slot, false)
    if timer then timer:cancel() end
  end)
  stream_slot(self, slot, false)
  if timer then timer:cancel() end
  return not fired
end

local function busy(fname) return nil, new_error(EBUSY, fname, "another task is using the stream") end

local function deadline_of(self)
  local t = rawget(self, "_timeout")
  return t and now() + t
end

local function read(self, kind, arg, max, fname)
  if stream_slot(self, "_reader") then return busy(fname) end
  local deadline
  while true do
    local r, why = take(self, kind, arg, max)
    if r then return r end
    if r == false then return nil, new_error(EMSGSIZE, fname, "no separator within the size given") end
    local err = rawget(self, "_err")
    if err then return nil, err end
    if why == "eof" then return nil end
    deadline = deadline or deadline_of(self)
    if not wait(self, "_reader", deadline, fname) then return nil, new_error(ETIMEDOUT, fname) end
  end
end

-- stream:read([fmt]), read_until(sep [, max]), read_some([max]) are C
-- functions (src/lstream.c) with their arguments checked; what they do not
-- do themselves comes here: kind "n", "l", "L", "a", "some" or "until".
local function slow_read(self, kind, arg, max, fname)
  local r, err = read(self, kind, arg, max, fname)
  if err ~= nil then return nil, err end
  if r == nil and kind == "a" then return "" end
  return r
end

-- stream:write(...) is a C function: it writes one string itself; the rest
-- comes here. Queues the strings (numbers too); suspends while the queue is
-- above write_high_water. The stream, or nil and an error.
local function slow_write(self, ...)
  local n = select("#", ...)
  for i = 1, n do
    local v = select(i, ...)
    if type(v) ~= "string" and type(v) ~= "number" then
      argerror(i, "write", "string expected, got " .. type(v))
    end
  end
  if stream_slot(self, "_writer") then return busy("write") end
  local err = rawget(self, "_err")
  if err then return nil, err end
  if self:fileno() == nil then return nil, new_error(EPIPE, "write", "the stream is closed") end
  for i = 1, n do
    local v = select(i, ...)
    self:push(type(v) == "number" and tostring(v) or v)
  end
  return self:_wait_writable()
end

-- after a write's pushes: wait while the queue is above the high mark
function Stream:_wait_writable()
  local err
  local deadline
  while rawget(self, "_wpaused") do
    err = rawget(self, "_err")
    if err then return nil, err end
    deadline = deadline or deadline_of(self)
    if not wait(self, "_writer", deadline, "write") then return nil, new_error(ETIMEDOUT, "write") end
  end
  err = rawget(self, "_err")
  if err then return nil, err end
  return self
end

core.stream_methods(Stream, slow_read, slow_write, Stream._wait_writable)

--- stream:flush(): waits until everything queued is sent.
function Stream:flush()
  if stream_slot(self, "_writer") then return busy("flush") end
  local deadline
  while self:out_buffer_size() > 0 and self:fileno() do
    local err = rawget(self, "_err")
    if err then return nil, err end
    deadline = deadline or deadline_of(self)
    if not wait(self, "_writer", deadline, "flush") then return nil, new_error(ETIMEDOUT, "flush") end
  end
  local err = rawget(self, "_err")
  if err then return nil, err end
  return self
end

--- stream:settimeout(seconds): for every later read, write and flush (nil: none).
function Stream:settimeout(seconds)
  if seconds ~= nil and (type(seconds) ~= "number" or seconds ~= seconds or seconds < 0) then
    argerror(1, "settimeout", "seconds: a number >= 0 or nil expected, got " .. tostring(seconds))
  end
  set(self, "_timeout", seconds)
  return self
end

--- stream:shutdown(): flushes, then half-closes the sending side; reading goes on.
function Stream:shutdown()
  local ok, err = self:flush()
  if not ok then return nil, err end
  self:shutdown_when_done()
  return self
end

--- stream:start_tls(ctx [, opts]): STARTTLS; the stream, or nil and an error.
function Stream:start_tls(ctx, opts)
  asynchat.async_chat.start_tls(self, ctx, opts)
  return self:_handshake("start_tls")
end

function Stream:_handshake(fname)
  local deadline = deadline_of(self)
  while not self:tls_info() do
    local err = rawget(self, "_err")
    if err then return nil, err end
    if not wait(self, "_waiter", deadline, fname) then return nil, new_error(ETIMEDOUT, fname) end
  end
  return self
end

--- stream:close(): what is queued is still sent (a close_notify under TLS), then it closes.
function Stream:close()
  if self:fileno() == nil then return end
  rawset(self, "_closing", true)
  if self:out_buffer_size() > 0 then
    self:close_when_done()
  else
    asyncore.dispatcher.close(self)
  end
  wake_all(self)
end
Stream.__close = Stream.close

function Stream:getpeername() return self.socket:getpeername() end
function Stream:getsockname() return self.socket:getsockname() end

local M = {}
M.Stream = Stream

local function check_opts(opts, n, fname, allowed)
  if opts == nil then return {} end
  if type(opts) ~= "table" then argerror(n, fname, "table expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not allowed[k] then argerror(n, fname, "unknown option '" .. tostring(k) .. "'") end
  end
  return opts
end

local function check_port(port, n, fname)
  if math.type(port) ~= "integer" or port < 0 or port > 65535 then
    argerror(n, fname, "port: an integer 0-65535 expected, got " .. tostring(port))
  end
end

local OPEN_OPTS = { timeout = true, tls = true, family = true, server_hostname = true, map = true }

function M.open_stream(host, port, opts)
  if type(host) ~= "string" or host == "" then argerror(1, "open_stream", "host name or address expected") end
  check_port(port, 2, "open_stream")
  opts = check_opts(opts, 3, "open_stream", OPEN_OPTS)
  mode("open_stream")
  local s = Stream(nil, opts.map)
  if opts.timeout then s:settimeout(opts.timeout) end
  if opts.family or core.tls_numeric_host(host) then
    s:create_socket(opts.family or (host:find(":", 1, true) and "inet6" or "inet"))
  end
  local ok, err = pcall(s.connect, s, { host, port })
  if not ok then
    s:close()
    return nil, err
  end
  if opts.tls then
    asynchat.async_chat.start_tls(s, opts.tls, { server_hostname = opts.server_hostname or
      (not core.tls_numeric_host(host) and host or nil) })
  end
  local deadline = opts.timeout and now() + opts.timeout
  while not s.connected or (opts.tls and not s:tls_info()) do
    err = rawget(s, "_err")
    if err then
      s:close()
      return nil, err
    end
    if not wait(s, "_waiter", deadline, "open_stream") then
      asyncore.dispatcher.close(s)
      return nil, new_error(ETIMEDOUT, "connect")
    end
  end
  return s
end

local SERVE_OPTS = { backlog = true, tls = true, reuseport = true, map = true }

-- the streams serve makes: connected from the start, which their class says
-- (an instance field only once that changes: an idle stream has two fields)
local Served = Stream:extend()
Served.connected = true

local Server = asyncore.dispatcher:extend()
Server.__name = "asyncore.stream_server"

function Server:handle_accepted(sock, addr)
  local s = Served(sock, rawget(self, "_smap"), true)
  local handler, tls = rawget(self, "_handler"), rawget(self, "_tls")
  if tls then asynchat.async_chat.start_tls(s, tls) end
  -- the task closes the stream when it ends (it guards it)
  if tls then
    task_spawn(s, function()
      if not s:_handshake("serve") then return end
      return handler(s, addr)
    end)
  else
    task_spawn(s, handler, s, addr)
  end
end

function M.serve(host, port, handler, opts)
  if type(host) ~= "string" then argerror(1, "serve", "host address expected") end
  check_port(port, 2, "serve")
  if type(handler) ~= "function" then argerror(3, "serve", "function expected, got " .. type(handler)) end
  opts = check_opts(opts, 4, "serve", SERVE_OPTS)
  local srv = Server(nil, opts.map)
  rawset(srv, "_handler", handler)
  -- a handler that takes no address gets none: accept() makes no table for it
  local info = getinfo and getinfo(handler, "u")
  if info and info.nparams < 2 and not info.isvararg then rawset(srv, "accept", core.dispatcher.accept_socket) end
  rawset(srv, "_tls", opts.tls)
  rawset(srv, "_smap", opts.map)
  srv:create_socket(host:find(":", 1, true) and "inet6" or "inet")
  srv:set_reuse_addr()
  if opts.reuseport then srv.socket:setsockopt("reuseport", true) end
  srv:bind { host, port }
  srv:listen(opts.backlog or 128)
  srv.port = srv.socket:getsockname()[2]
  return srv
end

return M
