
-- sluice: apply one change of a row stored as a JSON document, if it is newer than the
-- document's fence.
--
-- KEYS[1] the document, KEYS[2] its fence; when the row's key changed, KEYS[3] and KEYS[4]
-- are the document and fence under its previous key.
-- ARGV[1] the change's position; ARGV[2] 'set' (replace the document), 'merge' (replace it
-- but keep the stored values of the unchanged columns) or 'del'; ARGV[3] the TTL of the
-- document and its fence in milliseconds (0: none); ARGV[4] the TTL of a delete's fence, the
-- tombstone (0: no tombstone); ARGV[5] the new document; ARGV[6..] the unchanged columns'
-- names as JSON strings, quotes included.
--
-- Returns 'applied', 'stale' (a newer change is already stored: nothing to do) or 'missing'
-- (a merge, and no stored document to take the unchanged columns from).
--
-- Unchanged columns are copied from the stored document as raw JSON text, never decoded and
-- encoded again (cjson would turn large integers into floats).

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

-- The new document `doc` with the unchanged columns' values taken from `base`.
local function merge(doc, base)
  local stored = members(base)
  if not stored then
    error('the stored value is not a JSON object, so the unchanged columns cannot be kept from it')
  end
  local kept = {}
  for i = 6, #ARGV do
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

local function tombstone(key, fence)
  redis.call('DEL', key)
  if TOMBSTONE_TTL > 0 then
    redis.call('SET', fence, POS, 'PX', TOMBSTONE_TTL)
  else
    redis.call('DEL', fence)
  end
end

local function store(key, fence, doc)
  if TTL > 0 then
    redis.call('SET', key, doc, 'PX', TTL)
    redis.call('SET', fence, POS, 'PX', TTL)
  else
    redis.call('SET', key, doc)
    redis.call('SET', fence, POS)
  end
end

local key, fence, old, old_fence = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local fresh = newer(POS, redis.call('GET', fence))
local old_fresh = old ~= nil and newer(POS, redis.call('GET', old_fence))
if not fresh and not old_fresh then
  return 'stale'
end
if ACTION == 'del' then
  tombstone(key, fence)
  return 'applied'
end
if fresh then
  local doc = ARGV[5]
  if ACTION == 'merge' then
    local base = false
    if old == nil then
      base = redis.call('GET', key)
    elseif old_fresh then
      base = redis.call('GET', old)
    end
    if not base then
      return 'missing'
    end
    doc = merge(doc, base)
  end
  store(key, fence, doc)
end
if old_fresh then
  tombstone(old, old_fence)
end
return 'applied'
