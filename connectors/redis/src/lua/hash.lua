
-- sluice: apply one change of a row stored as a hash (one field per column), if it is newer
-- than the fence kept in the hash's `_sluice_pos` field.
--
-- KEYS[1] the hash; when the row's key changed, KEYS[2] is the hash under its previous key.
-- ARGV[1] the change's position; ARGV[2] 'set' (replace the hash), 'merge' (replace it but
-- keep the stored values of the unchanged columns) or 'del'; ARGV[3] the hash's TTL in
-- milliseconds (0: none); ARGV[4] the TTL of a delete's tombstone, a hash holding only the
-- fence (0: no tombstone); ARGV[5] = n, then n field/value pairs (the row's non-NULL
-- columns); then the unchanged columns' names.
--
-- Returns 'applied', 'stale' (a newer change is already stored: nothing to do) or 'missing'
-- (a merge, and no stored row to keep the unchanged columns of).

local FENCE = '_sluice_pos'
local PAIRS_END = 5 + 2 * tonumber(ARGV[5])

-- Whether `key` holds a row (a tombstone holds the fence alone).
local function has_row(key)
  return redis.call('HLEN', key) > redis.call('HEXISTS', key, FENCE)
end

local function tombstone(key)
  redis.call('DEL', key)
  if TOMBSTONE_TTL > 0 then
    redis.call('HSET', key, FENCE, POS)
    redis.call('PEXPIRE', key, TOMBSTONE_TTL)
  end
end

-- Replace the hash at `key` with the pairs of ARGV, `kept` (name/value pairs) and the fence.
local function replace(key, kept)
  local args = { key }
  for i = 6, PAIRS_END do
    args[#args + 1] = ARGV[i]
  end
  for i = 1, #kept do
    args[#args + 1] = kept[i]
  end
  args[#args + 1] = FENCE
  args[#args + 1] = POS
  redis.call('DEL', key)
  redis.call('HSET', unpack(args))
  if TTL > 0 then
    redis.call('PEXPIRE', key, TTL)
  end
end

-- The stored values of the unchanged columns in the hash at `base`, as name/value pairs
-- (a column without a field was NULL and stays so).
local function unchanged_fields(base)
  local names = {}
  for i = PAIRS_END + 1, #ARGV do
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

local key, old = KEYS[1], KEYS[2]
local fresh = newer(POS, redis.call('HGET', key, FENCE))
local old_fresh = old ~= nil and newer(POS, redis.call('HGET', old, FENCE))
if not fresh and not old_fresh then
  return 'stale'
end
if ACTION == 'del' then
  tombstone(key)
  return 'applied'
end
if fresh then
  local kept = {}
  if ACTION == 'merge' then
    -- The row's unchanged columns are where it was stored: under its previous key when
    -- the key changed.
    local base = key
    if old ~= nil then
      base = old_fresh and old or nil
    end
    if base == nil or not has_row(base) then
      return 'missing'
    end
    kept = unchanged_fields(base)
  end
  replace(key, kept)
end
if old_fresh then
  tombstone(old)
end
return 'applied'
