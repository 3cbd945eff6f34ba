-- A resolver with a lookup under way at fork(): the child must not use the
-- parent's c-ares channel (its socket, its pending query); it makes its own,
-- and the parent's lookup still completes.
-- usage: lua5.4 fork_resolve.lua FORKER_DIR DNS_PORT
package.cpath = arg[1] .. "/?.so;" .. package.cpath
local forker = require "forker"
local asyncore = require "asyncore"
asyncore.set_resolver { servers = { "127.0.0.1:" .. arg[2] }, timeout = 3, tries = 1 }

local function wait_for(pred)
  local deadline = asyncore.now() + 5
  while not pred() and asyncore.now() < deadline do asyncore.loop { timeout = 0.05, count = 1 } end
end

local function lookup(name)
  local got
  asyncore.resolve(name, function(a, e) got = a and a[1].host or tostring(e) end)
  wait_for(function() return got ~= nil end)
  return got
end

local slow
asyncore.resolve("slow.test", function(a, e) slow = a and a[1].host or tostring(e) end)
asyncore.loop { timeout = 0.05, count = 2 }   -- its query is out, its answer 1.5 s away
io.stdout:flush()
local pid = forker.fork()
if pid == 0 then
  print("child", lookup("child.test"))
  wait_for(function() return slow ~= nil end)
  print("child inherited", slow or "still pending")
  io.stdout:flush()
  os.exit(0)
end
local _, status = forker.wait(pid)
print("child status", status)
wait_for(function() return slow ~= nil end)
print("parent slow", slow)
