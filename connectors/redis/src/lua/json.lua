-- sluice: apply changes of rows stored as JSON documents, each only if it is newer than
-- the document's fence. One call applies many rows, in order (see `run_rows`).
--
-- For each row, KEYS holds the document and its fence, then (when the row's key changed)
-- the document and fence under its previous key.
-- ARGV[1] the TTL of documents and their fences in milliseconds (0: none); ARGV[2] the TTL
-- of a delete's fence, the tombstone (0: no tombstone); then for each row: its position;
-- its action, 's' (replace the document), 'm' (replace it but keep the stored values of
-- the unchanged columns) or 'd' (delete), in capitals ('S', 'M') when the key changed;
-- for 's' and 'm' the new document; for 'm' the number of unchanged columns and their
-- names as JSON strings, quotes included.
--
-- Each row's status is 'a' (applied), 's' (stale: a newer change is stored, nothing to
-- do), 'm' (missing: a merge, and no stored document to take the unchanged columns from),
-- 'd' (not attempted: its key failed earlier in the call) or 'e' (failed; the error text
-- follows the statuses in the reply).
--
-- Unchanged columns are copied from the stored document as raw JSON text, never decoded
-- and encoded again (cjson would turn large integers into floats).

local TTL = tonumber(ARGV[1])
local TOMBSTONE_TTL = tonumber(ARGV[2])

-- The index of the next character of `s` from `i` on that is not JSON whitespace.
local function skip_blank(s, i)
  return string.find(s, '[^ \t\r\n]', i)
end

-- The index of the closing quote of the JSON string opening at `i`.
local function string_end(s, i)
  local j = i + 1
  while true do
    local q = string.find(s, '["\\]', j)
    if not q then
      return nil
    end
    if string.byte(s, q) == 92 then
      j = q + 2
    else
      return q
    end
  end
end

-- The index of the last character of the JSON value starting at `i`.
local function value_end(s, i)
  local c = string.sub(s, i, i)
  if c == '"' then
    return string_end(s, i)
  end
  if c == '{' or c == '[' then
    local depth, j = 0, i
    while true do
      local p = string.find(s, '[%[%]{}"]', j)
      if not p then
        return nil
      end
      local ch = string.sub(s, p, p)
      if ch == '"' then
        p = string_end(s, p)
        if not p then
          return nil
        end
      elseif ch == '{' or ch == '[' then
        depth = depth + 1
      else
        depth = depth - 1
        if depth == 0 then
          return p
        end
      end
      j = p + 1
    end
  end
  local p = string.find(s, '[,}%] \t\r\n]', i)
  if not p then
    return nil
  end
  return p - 1
end

-- The members of the JSON object `s`, as name (quotes included) to raw value text; nil
-- when `s` is not a JSON object.
local function members(s)
  local out = {}
  local i = skip_blank(s, 1)
  if not i or string.sub(s, i, i) ~= '{' then
    return nil
  end
  i = skip_blank(s, i + 1)
  if i and string.sub(s, i, i) == '}' then
    return out
  end
  while i do
    if string.sub(s, i, i) ~= '"' then
      return nil
    end
    local name_end = string_end(s, i)
    if not name_end then
      return nil
    end
    local colon = skip_blank(s, name_end + 1)
    if not colon or string.sub(s, colon, colon) ~= ':' then
      return nil
    end
    local v = skip_blank(s, colon + 1)
    local v_end = v and value_end(s, v)
    if not v_end then
      return nil
    end
    out[string.sub(s, i, name_end)] = string.sub(s, v, v_end)
    local after = skip_blank(s, v_end + 1)
    if not after then
      return nil
    end
    local c = string.sub(s, after, after)
    if c == '}' then
      return out
    end
    if c ~= ',' then
      return nil
    end
    i = skip_blank(s, after + 1)
  end
  return nil
end

-- The new document `doc` with the unchanged columns' values (names at ARGV[first..last])
-- taken from `base`.
local function merge(doc, base, first, last)
  local stored = members(base)
  if not stored then
    error('the stored value is not a JSON object, so the unchanged columns cannot be kept from it', 0)
  end
  local kept = {}
  for i = first, last do
    local raw = stored[ARGV[i]]
    if raw then
      kept[#kept + 1] = ARGV[i] .. ':' .. raw
    end
  end
  if #kept == 0 then
    return doc
  end
  local open = string.sub(doc, 1, -2)
  if open == '{' then
    return open .. table.concat(kept, ',') .. '}'
  end
  return open .. ',' .. table.concat(kept, ',') .. '}'
end

local function tombstone(key, fence, pos)
  redis.call('DEL', key)
  if TOMBSTONE_TTL > 0 then
    redis.call('SET', fence, pos, 'PX', TOMBSTONE_TTL)
  else
    redis.call('DEL', fence)
  end
end

local function store(key, fence, doc, pos)
  if TTL > 0 then
    redis.call('SET', key, doc, 'PX', TTL)
    redis.call('SET', fence, pos, 'PX', TTL)
  else
    redis.call('MSET', key, doc, fence, pos)
  end
end

-- The row whose arguments start at ARGV[a] and keys at KEYS[k].
local function next_row(a, k)
  local action = ARGV[a + 1]
  local row = { key = KEYS[k], fence = KEYS[k + 1], pos = ARGV[a] }
  k = k + 2
  if action == 'S' or action == 'M' then
    row.old, row.old_fence = KEYS[k], KEYS[k + 1]
    k = k + 2
    action = string.lower(action)
  end
  row.action = action
  a = a + 2
  if action ~= 'd' then
    row.doc = ARGV[a]
    a = a + 1
  end
  if action == 'm' then
    local n = tonumber(ARGV[a])
    row.first, row.last = a + 1, a + n
    a = a + n + 1
  end
  return row, a, k
end

local function apply(row)
  local key, old = row.key, row.old
  local fresh = newer(row.pos, redis.call('GET', row.fence))
  local old_fresh = old ~= nil and newer(row.pos, redis.call('GET', row.old_fence))
  if not fresh and not old_fresh then
    return STALE
  end
  if row.action == 'd' then
    tombstone(key, row.fence, row.pos)
    return APPLIED
  end
  if fresh then
    local doc = row.doc
    if row.action == 'm' then
      -- The row's unchanged columns are where it was stored: under its previous key when
      -- the key changed.
      local base = false
      if old == nil then
        base = redis.call('GET', key)
      elseif old_fresh then
        base = redis.call('GET', old)
      end
      if not base then
        return MISSING
      end
      doc = merge(doc, base, row.first, row.last)
    end
    store(key, row.fence, doc, row.pos)
  end
  if old_fresh then
    tombstone(old, row.old_fence, row.pos)
  end
  return APPLIED
end

return run_rows(3, next_row, apply)
