-- sluice: the position fence shared by the cache scripts (json.lua and hash.lua are
-- appended to this file).
--
-- A fence is the position of the last change applied to a key: commit LSN, index in the
-- transaction and fan-out number as 16 + 8 + 8 lowercase hex digits. Fences are compared
-- 8 digits (32 bits) at a time as numbers, which Lua holds exactly, so neither the server's
-- locale collation nor float rounding can reorder two positions.

-- Whether position `a` is newer than the stored fence `b` (false: nothing stored).
local function newer(a, b)
  if not b then
    return true
  end
  if #b ~= #a or string.find(b, '[^0-9a-f]') then
    error('the fence stored for this key (' .. b .. ') is not a sluice position')
  end
  for i = 1, #a, 8 do
    local x = tonumber(string.sub(a, i, i + 7), 16)
    local y = tonumber(string.sub(b, i, i + 7), 16)
    if x ~= y then
      return x > y
    end
  end
  return false
end

local POS = ARGV[1]
local ACTION = ARGV[2]
local TTL = tonumber(ARGV[3])
local TOMBSTONE_TTL = tonumber(ARGV[4])
