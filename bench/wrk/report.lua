-- wrk reporter for bench/run: one machine-readable line per run.
--   RESULT rps=<requests per second> p50_us=<µs> p99_us=<µs> requests=<n>
--          socket_errors=<connect+read+write+timeout> non2xx=<responses not 2xx/3xx>
-- Latency is wrk's per-request latency (time from writing the request to reading the
-- whole response), over every request of the run.
--
-- With the PACE_MS environment variable set (`--pace=MS` of bench/run and bench/identity),
-- every connection waits that many milliseconds after each response before it sends the next
-- request, so every target gets about the same offered load below its saturation and p50/p99
-- compare latency at equal load rather than at each proxy's own peak. wrk's timers fire on its
-- event loop's millisecond tick, so the connections send in bursts: the latencies include
-- queueing behind the burst, the same for every target. Unset, wrk sends as fast as it can
-- (and, with no `delay` defined, builds a static request once, with no Lua per request).
local pace = os.getenv("PACE_MS")
if pace and pace ~= "" then
  local ms = tonumber(pace) or error("report.lua: PACE_MS must be a number of milliseconds, not " .. pace)
  delay = function()
    return ms
  end
end
done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT rps=%.1f p50_us=%d p99_us=%d requests=%d socket_errors=%d non2xx=%d\n",
    summary.requests / seconds,
    latency:percentile(50), latency:percentile(99),
    summary.requests,
    e.connect + e.read + e.write + e.timeout,
    e.status))
end
