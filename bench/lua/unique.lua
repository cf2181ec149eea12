-- POST process requests with a distinct input each (fills the cache); ~300-byte answers.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Request-Timeout"] = os.getenv("DEADLINE") or "2"
local pad = string.rep("p", 200)
local run = os.getenv("RUN") or "0"
local n = 0
local id = 0
function setup(thread)
  id = id + 1
  thread:set("id", id)
end
function request()
  n = n + 1
  local body = string.format('{"data": {"input": "%s-%d-%d-%s"}}', run, id, n, pad)
  return wrk.format(nil, nil, nil, body)
end
