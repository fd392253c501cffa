-- wrk script for scripts/bench_http.sh: every request carries one of the
-- pre-created session cookies (COOKIES names the file, one Cookie header
-- value a line), picked at random; done() prints one JSON line.
local cookies = {}

function setup(thread)
  thread:set("id", math.random(1, 1000000))
end

function init(args)
  for line in io.lines(os.getenv("COOKIES")) do
    cookies[#cookies + 1] = line
  end
  math.randomseed(os.time() + (id or 0))
end

function request()
  return wrk.format(nil, nil, { ["Cookie"] = cookies[math.random(#cookies)] })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.connect + e.read + e.write + e.timeout, e.status))
end
