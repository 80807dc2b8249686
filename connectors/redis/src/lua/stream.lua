-- sluice: append entries to one stream, in order, stopping at the first one that fails.
--
-- KEYS[1] the stream. ARGV[1] the approximate MAXLEN ('' for none), ARGV[2] the field that
-- holds the envelope, then for each entry its id and its envelope.
--
-- The reply is the statuses of the entries attempted, one letter each: 'a' (appended),
-- 'p' (present: the id is not above the stream's last one, so the entry, or a later one,
-- is there already). When an entry fails, its status is 'e', the error text follows, and
-- the entries after it are not attempted: appending them would put the stream's top past
-- the failed entry, which could then never be appended.

local stream, maxlen, field = KEYS[1], ARGV[1], ARGV[2]
local NOT_ABOVE_TOP = 'equal or smaller than the target stream top item'
local statuses = {}
for i = 3, #ARGV, 2 do
  local ok, e
  if maxlen == '' then
    ok, e = pcall(redis.call, 'XADD', stream, ARGV[i], field, ARGV[i + 1])
  else
    ok, e = pcall(redis.call, 'XADD', stream, 'MAXLEN', '~', maxlen, ARGV[i], field, ARGV[i + 1])
  end
  if ok then
    statuses[#statuses + 1] = 'a'
  else
    local text = error_text(e)
    if not string.find(text, NOT_ABOVE_TOP, 1, true) then
      statuses[#statuses + 1] = 'e'
      return { table.concat(statuses), text }
    end
    statuses[#statuses + 1] = 'p'
  end
end
return { table.concat(statuses) }
