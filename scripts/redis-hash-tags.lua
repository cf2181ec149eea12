-- Moves courier's jobs and quota counts from the key layout before hash tags (`courier:…`) to
-- the tagged one (`{courier}:…`, docs/operations.md, "Redis in production"). For one Redis (the
-- old layout never ran on a Cluster), run while no courier of the old version runs:
--
--   redis-cli [connection options] --eval scripts/redis-hash-tags.lua , courier
--
-- * The queue `courier:jobs`: each entry is added to `{courier}:jobs` (which a new replica may
--   have created already) and the old stream is deleted. An entry a dead old runner held is
--   delivered afresh; the job's document says whether it had started, so the new runner counts
--   the takeover as for any runner that died.
-- * Job documents `courier:job:*` are renamed (their expiry is kept).
-- * Quota counts `courier:quota:*` are added to the tagged key's (a new replica may have
--   counted already); the later of the two expiries is kept.
-- The token, the budget's state and cached answers are left to expire: they are rebuilt.
-- Returns {queue entries moved, documents moved, quota keys moved}. Running it twice is harmless.

local ns = ARGV[1] or 'courier'
local function tagged(key)
  return '{' .. ns .. '}' .. string.sub(key, #ns + 1)
end

local function each(pattern, f)
  local cursor = '0'
  repeat
    local page = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = page[1]
    for _, key in ipairs(page[2]) do f(key) end
  until cursor == '0'
end

local entries, docs, quotas = 0, 0, 0

local old_queue = ns .. ':jobs'
if redis.call('EXISTS', old_queue) == 1 then
  local new_queue = tagged(old_queue)
  for _, entry in ipairs(redis.call('XRANGE', old_queue, '-', '+')) do
    redis.call('XADD', new_queue, '*', unpack(entry[2]))
    entries = entries + 1
  end
  redis.call('DEL', old_queue)
  -- The group new runners read through, from the start of the stream if it is new here.
  pcall(redis.call, 'XGROUP', 'CREATE', new_queue, 'runners', '0', 'MKSTREAM')
end

each(ns .. ':job:*', function(key)
  if redis.call('EXISTS', tagged(key)) == 0 then
    redis.call('RENAME', key, tagged(key))
    docs = docs + 1
  end
end)

each(ns .. ':quota:*', function(key)
  local new = tagged(key)
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    redis.call('HINCRBY', new, fields[i], fields[i + 1])
  end
  local expires = math.max(redis.call('PEXPIRETIME', key), redis.call('PEXPIRETIME', new))
  if expires > 0 then redis.call('PEXPIREAT', new, expires) end
  redis.call('DEL', key)
  quotas = quotas + 1
end)

return {entries, docs, quotas}
