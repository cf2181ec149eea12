-- POST process requests over KEYS distinct bodies, the same ones in every run (~300-byte
-- answers). MODE=seq goes through them in order (to fill a cache), MODE=uniform picks one at
-- random, MODE=zipf by Zipf's law (the k-th most asked body is asked 1/k as often as the first).
local keys = tonumber(os.getenv("KEYS") or "5000")
local mode = os.getenv("MODE") or "uniform"
local requests, cdf = {}, {}
local n = 0

function init(args)
  local pad = string.rep("p", 200)
  for i = 1, keys do
    local body = string.format('{"data": {"input": "k%d-%s"}}', i, pad)
    requests[i] = wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
  end
  if mode == "zipf" then
    local sum = 0
    for i = 1, keys do
      sum = sum + 1 / i
      cdf[i] = sum
    end
    for i = 1, keys do
      cdf[i] = cdf[i] / sum
    end
  end
  math.randomseed(42)
end

local function zipf()
  local u, lo, hi = math.random(), 1, keys
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

function request()
  if mode == "seq" then
    n = n % keys + 1
    return requests[n]
  elseif mode == "zipf" then
    return requests[zipf()]
  end
  return requests[math.random(keys)]
end
