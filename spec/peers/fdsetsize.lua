-- Opens descriptors past FD_SETSIZE, then asks the select backend to watch one.
local asyncore = require "asyncore"
local keep = {}
while true do
  local s = asyncore.socket()
  keep[#keep + 1] = s
  if s:fileno() >= 1030 then break end
end
local d = asyncore.dispatcher()
d:create_socket()
print("fd " .. d:fileno())
local ok, err = pcall(asyncore.loop, { backend = "select", count = 1, timeout = 0 })
print("select: " .. tostring(ok) .. " " .. tostring(err))
ok, err = pcall(asyncore.loop, { backend = "poll", count = 1, timeout = 0 })
print("poll: " .. tostring(ok))
