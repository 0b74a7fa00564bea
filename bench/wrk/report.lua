-- wrk reporter for bench/run: one machine-readable line per run.
--   RESULT rps=<requests per second> p50_us=<µs> p99_us=<µs> requests=<n>
--          socket_errors=<connect+read+write+timeout> non2xx=<responses not 2xx/3xx>
-- Latency is wrk's per-request latency (time from writing the request to reading the
-- whole response), over every request of the run.
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
