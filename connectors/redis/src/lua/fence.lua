-- sluice: the position fence shared by the cache scripts (json.lua or hash.lua is appended
-- to this file).
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
    error('the fence stored for this key (' .. b .. ') is not a sluice position', 0)
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

-- Statuses of a row, one letter each in the reply (see `run_rows`).
local APPLIED, STALE, MISSING, DEFERRED, FAILED = 'a', 's', 'm', 'd', 'e'

-- Apply every row of the call in order: `next_row(a, k)` reads the row whose arguments
-- start at ARGV[a] and keys at KEYS[k] and returns its description and where the next row
-- starts; `apply(row)` writes it and returns its status. A row whose key (or previous key)
-- failed earlier in this call is not attempted (`d`), so a key's changes never overtake
-- its failed one. Returns the statuses as one string, then the text of each failure in
-- order.
local function run_rows(first_argv, next_row, apply)
  local statuses, errors, failed = {}, {}, {}
  local a, k = first_argv, 1
  while a <= #ARGV do
    local row
    row, a, k = next_row(a, k)
    local status
    if failed[row.key] or (row.old and failed[row.old]) then
      status = DEFERRED
    else
      local ok, result = pcall(apply, row)
      if ok then
        status = result
      else
        status = FAILED
        errors[#errors + 1] = error_text(result)
      end
    end
    if status ~= APPLIED and status ~= STALE then
      failed[row.key] = true
      if row.old then
        failed[row.old] = true
      end
    end
    statuses[#statuses + 1] = status
  end
  local reply = { table.concat(statuses) }
  for i = 1, #errors do
    reply[#reply + 1] = errors[i]
  end
  return reply
end

