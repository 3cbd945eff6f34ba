-- The binding layer's files depend on each other one way: each l*.c and l*.h
-- includes only the headers of files below it in this order (src/README.md),
-- and the plain-C floor includes no binding header and no Lua header.
local ORDER = { "lbind", "lerror", "ltransport", "lsocket", "lreg", "ltimeout", "lresolve", "lsignal", "lflow", "lmode", "ltimer", "ltask", "lchan",
  "lchat", "lstream", "ltls", "lloop", "lcore" }
local FLOOR = { "sock", "buffer", "timerheap", "clock", "errnames", "poller", "poller_select",
  "poller_poll", "poller_epoll", "poller_kqueue", "ac", "config" }

local function includes(path)
  local f = io.open(path)
  if not f then return nil end
  local list = {}
  for line in f:lines() do
    local h = line:match('^#include "([%w_]+)%.h"')
    if h then list[#list + 1] = h end
    if line:match("^#include <lua") or line:match("^#include <lauxlib") then list[#list + 1] = "<lua>" end
  end
  f:close()
  return list
end

describe("the C core's layout", function()
  local rank = {}
  for i, name in ipairs(ORDER) do rank[name] = i end
  local floor = {}
  for _, name in ipairs(FLOOR) do floor[name] = true end

  it("names every binding file in the order", function()
    for f in io.popen("ls src"):lines() do
      local base = f:match("^(l[%w_]+)%.[ch]$")
      if base then assert.is_not_nil(rank[base], "not in the layering order: " .. f) end
    end
  end)

  it("has binding files that include only headers of files below them", function()
    for i, name in ipairs(ORDER) do
      for _, ext in ipairs { ".c", ".h" } do
        local inc = includes("src/" .. name .. ext)
        for _, h in ipairs(inc or {}) do
          if rank[h] then
            local ok = rank[h] < i or (h == name and ext == ".c")
            assert.is_true(ok, ("src/%s%s includes %s.h, which is not below it"):format(name, ext, h))
          end
        end
      end
    end
  end)

  it("keeps the plain-C floor free of Lua and of the binding", function()
    for name in pairs(floor) do
      for _, ext in ipairs { ".c", ".h" } do
        for _, h in ipairs(includes("src/" .. name .. ext) or {}) do
          assert.is_true(h ~= "<lua>" and not rank[h], ("src/%s%s includes %s"):format(name, ext, h))
        end
      end
    end
  end)
end)
