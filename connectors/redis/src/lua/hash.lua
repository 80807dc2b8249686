-- sluice: apply changes of rows stored as hashes (one field per column), each only if it
-- is newer than the fence kept in the hash's `_sluice_pos` field. One call applies many
-- rows, in order (see `run_rows`).
--
-- For each row, KEYS holds the hash, then (when the row's key changed) the hash under its
-- previous key.
-- ARGV[1] the TTL of hashes in milliseconds (0: none); ARGV[2] the TTL of a delete's
-- tombstone, a hash holding only the fence (0: no tombstone); then for each row: its
-- position; its action, 's' (replace the hash), 'm' (replace it but keep the stored values
-- of the unchanged columns) or 'd' (delete), in capitals ('S', 'M') when the key changed;
-- for 's' and 'm' the number n of fields, then n field/value pairs (the row's non-NULL
-- columns); for 'm' the number of unchanged columns and their names.
--
-- Each row's status is 'a' (applied), 's' (stale: a newer change is stored, nothing to
-- do), 'm' (missing: a merge, and no stored row to keep the unchanged columns of), 'd' (not
-- attempted: its key failed earlier in the call) or 'e' (failed; the error text follows
-- the statuses in the reply).

local TTL = tonumber(ARGV[1])
local TOMBSTONE_TTL = tonumber(ARGV[2])
local FENCE = '_sluice_pos'

-- Whether `key` holds a row (a tombstone holds the fence alone).
local function has_row(key)
  return redis.call('HLEN', key) > redis.call('HEXISTS', key, FENCE)
end

local function tombstone(key, pos)
  redis.call('DEL', key)
  if TOMBSTONE_TTL > 0 then
    redis.call('HSET', key, FENCE, pos)
    redis.call('PEXPIRE', key, TOMBSTONE_TTL)
  end
end

-- Replace the hash at `key` with the row's pairs, `kept` (name/value pairs) and the fence.
-- A new key is not deleted first: the first write of a call is the one Redis refuses when
-- it is out of memory, and after a DEL it would let the call write past `maxmemory`.
local function replace(row, key, kept, fenced)
  local args = { key }
  for i = row.first_pair, row.last_pair do
    args[#args + 1] = ARGV[i]
  end
  for i = 1, #kept do
    args[#args + 1] = kept[i]
  end
  args[#args + 1] = FENCE
  args[#args + 1] = row.pos
  if fenced or redis.call('EXISTS', key) == 1 then
    redis.call('DEL', key)
  end
  redis.call('HSET', unpack(args))
  if TTL > 0 then
    redis.call('PEXPIRE', key, TTL)
  end
end

-- The stored values of the row's unchanged columns in the hash at `base`, as name/value
-- pairs (a column without a field was NULL and stays so).
local function unchanged_fields(row, base)
  local names = {}
  for i = row.first_name, row.last_name do
    names[#names + 1] = ARGV[i]
  end
  local kept = {}
  if #names == 0 then
    return kept
  end
  local values = redis.call('HMGET', base, unpack(names))
  for i, name in ipairs(names) do
    if values[i] then
      kept[#kept + 1] = name
      kept[#kept + 1] = values[i]
    end
  end
  return kept
end

-- The row whose arguments start at ARGV[a] and keys at KEYS[k].
local function next_row(a, k)
  local action = ARGV[a + 1]
  local row = { key = KEYS[k], pos = ARGV[a] }
  k = k + 1
  if action == 'S' or action == 'M' then
    row.old = KEYS[k]
    k = k + 1
    action = string.lower(action)
  end
  row.action = action
  a = a + 2
  if action ~= 'd' then
    local n = tonumber(ARGV[a])
    row.first_pair, row.last_pair = a + 1, a + 2 * n
    a = a + 2 * n + 1
  end
  row.first_name, row.last_name = a, a - 1
  if action == 'm' then
    local n = tonumber(ARGV[a])
    row.first_name, row.last_name = a + 1, a + n
    a = a + n + 1
  end
  return row, a, k
end

local function apply(row)
  local key, old = row.key, row.old
  local fence = redis.call('HGET', key, FENCE)
  local fresh = newer(row.pos, fence)
  local old_fresh = old ~= nil and newer(row.pos, redis.call('HGET', old, FENCE))
  if not fresh and not old_fresh then
    return STALE
  end
  if row.action == 'd' then
    tombstone(key, row.pos)
    return APPLIED
  end
  if fresh then
    local kept = {}
    if row.action == 'm' then
      -- The row's unchanged columns are where it was stored: under its previous key when
      -- the key changed.
      local base = key
      if old ~= nil then
        base = old_fresh and old or nil
      end
      if base == nil or not has_row(base) then
        return MISSING
      end
      kept = unchanged_fields(row, base)
    end
    replace(row, key, kept, fence)
  end
  if old_fresh then
    tombstone(old, row.pos)
  end
  return APPLIED
end

return run_rows(3, next_row, apply)
