-- A listener in a process with few descriptors (run under `ulimit -n`): it
-- keeps every accepted connection until accept fails for lack of descriptors,
-- then releases them and must go on accepting.
-- usage: lua5.4 spec/peers/emfile_server.lua N   (prints "port P", exits after N accepts)
local asyncore = require "asyncore"
local want = tonumber(arg[1])
local held, accepted, warnings, errors = {}, 0, 0, 0

local Server = asyncore.dispatcher:extend()
function Server:handle_accepted(sock)
  accepted = accepted + 1
  held[#held + 1] = sock
  print("accepted " .. accepted)
  io.stdout:flush()
  if accepted == want then error(asyncore.ExitNow) end
end
function Server:log_info(msg, kind)
  if kind == "warning" then
    warnings = warnings + 1
    print("warning: " .. msg)
    io.stdout:flush()
  elseif kind == "error" then
    -- logged once per episode, at "error" (the default ignore_log_types hides warnings)
    errors = errors + 1
    print("error: " .. msg)
    io.stdout:flush()
    asyncore.call_later(0.3, function()
      for _, s in ipairs(held) do s:close() end
      held = {}
      print("released")
      io.stdout:flush()
    end)
  end
end

local s = Server()
s:create_socket()
s:bind { "127.0.0.1", 0 }
s:listen(128)
print("port " .. s.socket:getsockname()[2])
io.stdout:flush()
local t0 = os.clock()
local ok, err = pcall(asyncore.loop, { timeout = 1 })
print(("done ok=%s err=%s warnings=%d errors=%d cpu=%.3f"):format(tostring(ok), tostring(err), warnings,
  errors, os.clock() - t0))
