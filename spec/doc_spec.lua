-- The reference manual (doc/reference.md) documents every public name: this
-- walks the modules' tables and the classes', sockets', timers' and errors'
-- metatables, and looks each name up in its section of the manual (inside a
-- `code span`).
local asyncore = require "asyncore"
local asynchat = require "asynchat"

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

-- section title -> set of identifiers found in its code spans
local function sections(text)
  local out, title = {}, nil
  for line in (text .. "\n"):gmatch("(.-)\n") do
    local t = line:match("^## (.+)$")
    if t then
      title = t
      out[title] = out[title] or {}
    elseif title then
      for span in line:gmatch("`([^`]+)`") do
        for id in span:gmatch("[%a_][%w_]*") do out[title][id] = true end
      end
    end
  end
  return out
end

local function keys(...)
  local set = {}
  for _, t in ipairs { ... } do
    for k in pairs(t) do
      if type(k) == "string" then set[k] = true end
    end
  end
  return set
end

local function minus(a, b)
  local r = {}
  for k in pairs(a) do if not b[k] then r[k] = true end end
  return r
end

describe("the reference manual", function()
  local doc = sections(read("doc/reference.md"))
  after_each(function() asyncore.close_all() end)

  local function check(section, names)
    local have = doc[section]
    assert.is_table(have, "no section '## " .. section .. "' in doc/reference.md")
    local missing = {}
    for name in pairs(names) do
      if not have[name] then missing[#missing + 1] = name end
    end
    table.sort(missing)
    assert.same({}, missing, "undocumented in '" .. section .. "'")
  end

  it("covers the modules", function()
    check("Module asyncore", keys(asyncore))
    check("Module asynchat", keys(asynchat))
  end)

  it("covers the classes and their methods and attributes", function()
    local object = keys(getmetatable(asyncore.Object:extend()()))   -- a subclass: with `super`
    check("Classes", object)
    local d = asyncore.dispatcher()
    d:create_socket()                          -- the fields a channel gets at work too
    d:bind { "127.0.0.1", 0 }
    local dispatcher = keys(getmetatable(d), d)
    check("dispatcher", minus(dispatcher, object))
    local ds = asyncore.dispatcher_with_send()
    check("dispatcher_with_send", minus(keys(getmetatable(ds), ds), dispatcher))
    local s = asyncore.socket()
    local fd = asyncore.file_dispatcher(s:fileno())
    check("file_dispatcher", minus(keys(getmetatable(fd), fd), dispatcher))
    fd:close(); s:close()
    local chat = asynchat.async_chat()
    local chat_names = minus(keys(getmetatable(chat), chat), dispatcher)
    chat_names._chat = nil                     -- the C state, private
    check("async_chat", chat_names)
    local sp = asynchat.simple_producer("x")
    check("simple_producer", minus(keys(getmetatable(sp), sp), object))
  end)

  it("covers sockets, timers and errors", function()
    local s = asyncore.socket()
    local mt = getmetatable(s)
    check("Sockets", keys(mt, mt.__index))
    local t = asyncore.call_later(10, function() end)
    local timer = {}
    for _, name in ipairs { "cancel", "cancelled", "reset", "delay", "deadline" } do
      assert.is_not_nil(t[name], name)
      timer[name] = true
    end
    t:cancel()
    check("Timers", timer)
    local l = asyncore.socket()
    l:bind { "127.0.0.1", 0 }
    local ok, err = pcall(s.bind, s, l:getsockname())
    assert.is_false(ok)
    check("Errors", keys(err, getmetatable(err)))
    l:close(); s:close()
  end)
end)
