local H = require "helpers"

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"exit=$?\"")
  local out = p:read("a")
  p:close()
  return out, tonumber(out:match("exit=(%d+)%s*$"))
end

describe("installation", function()
  local tmp
  before_each(function()
    tmp = H.capture("mktemp -d"):gsub("%s+$", "")
    -- build from a copy, so the tree's own build is left alone
    sh(("cp -r lua src *.rockspec Makefile %s/"):format(tmp))
  end)
  after_each(function() os.execute("rm -rf " .. tmp) end)

  local function check_tree(tree)
    local env = ("LUA_PATH='%s/share/lua/5.4/?.lua' LUA_CPATH='%s/lib/lua/5.4/?.so'"):format(tree, tree)
    local out = H.capture(("cd /tmp && %s timeout 20 %s %s/spec/peers/installed_check.lua")
      :format(env, H.LUA, H.ROOT))
    assert.matches("asyncore from " .. tree:gsub("%p", "%%%0"), out)
    assert.matches("core from " .. tree:gsub("%p", "%%%0"), out)
    assert.matches("served installed rock", out)
    assert.matches("streams: streamed back", out)
    assert.matches("streams from " .. tree:gsub("%p", "%%%0"), out)
  end

  it("has a rockspec that luarocks lint accepts, with a test section and the platforms", function()
    if not H.capture("command -v luarocks"):match("luarocks") then
      return pending("luarocks is not installed")
    end
    local out, status = sh("luarocks --lua-version 5.4 lint lua-asyncore-*.rockspec")
    assert.equal(0, status, out)
    local spec = {}
    local path = H.capture("ls lua-asyncore-*.rockspec"):gsub("%s+$", "")
    local f = assert(io.open(path))
    assert(load(f:read("a"), "rockspec", "t", spec))()
    f:close()
    assert.equal("MIT", spec.description.license)
    assert.is_string(spec.description.homepage)
    assert.same({ "linux", "bsd", "macosx" }, spec.supported_platforms)
    assert.equal("command", spec.test.type)
    -- the C core's sources are every src/*.c
    local listed = {}
    for _, f in ipairs(spec.build.modules["asyncore.core"].sources) do listed[#listed + 1] = f end
    table.sort(listed)
    local present = {}
    for f in H.capture("ls src/*.c"):gmatch("%S+") do present[#present + 1] = f end
    table.sort(present)
    assert.same(present, listed)
  end)

  it("builds and installs the rock offline with luarocks make", function()
    if not H.capture("command -v luarocks"):match("luarocks") then
      return pending("luarocks is not installed")
    end
    local out, status = sh(("cd %s && timeout 120 luarocks --lua-version 5.4 make --tree %s/tree "
      .. "lua-asyncore-*.rockspec CFLAGS='-O2 -fPIC -Wall -Wextra -Werror'"):format(tmp, tmp))
    assert.equal(0, status, out)
    check_tree(tmp .. "/tree")
  end)

  it("installs with make install PREFIX=...", function()
    local out, status = sh(("cd %s && make -s install PREFIX=%s/usr"):format(tmp, tmp))
    assert.equal(0, status, out)
    check_tree(tmp .. "/usr")
  end)
end)
