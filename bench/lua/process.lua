-- POST a small process request. Environment: DEADLINE (X-Request-Timeout, seconds) and
-- PACE_MS (pause per connection between requests, for a paced offered load).
wrk.method = "POST"
wrk.body = '{"data": {"input": "bench", "format": "text"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Request-Timeout"] = os.getenv("DEADLINE") or "2"

local pace = tonumber(os.getenv("PACE_MS") or "0")
if pace > 0 then
  function delay()
    return pace
  end
end

-- Answers by status, per thread; summed in done().
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

n200, n429, n503, nother = 0, 0, 0, 0
function response(status, headers, body)
  if status == 200 then n200 = n200 + 1
  elseif status == 429 then n429 = n429 + 1
  elseif status == 503 then n503 = n503 + 1
  else nother = nother + 1 end
end

function done(summary, latency, requests)
  local t = { 0, 0, 0, 0 }
  for _, thread in ipairs(threads) do
    t[1] = t[1] + thread:get("n200")
    t[2] = t[2] + thread:get("n429")
    t[3] = t[3] + thread:get("n503")
    t[4] = t[4] + thread:get("nother")
  end
  io.write(string.format("statuses: 200=%d 429=%d 503=%d other=%d\n", t[1], t[2], t[3], t[4]))
end
