-- sluice: shared by every script (the mode's script is appended to this file).
--
-- Each script applies many rows or entries in one call. A row's error is caught (pcall) and
-- reported for that row only, as text: the code Redis put first (`OOM ...`, `WRONGTYPE
-- ...`), or a message of the script's own, without a code.

-- The text of an error caught by pcall: Redis 7 raises errors of redis.call as strings,
-- Redis 6 as tables with an `err` field.
local function error_text(e)
  if type(e) == 'table' then
    e = e.err
  end
  return tostring(e)
end

