-- Pacing for `--pace=MS` (bench/run and bench/identity): when the PACE_MS environment variable
-- is set, every connection waits that many milliseconds after each response before it sends
-- the next request, so every target gets about the same offered load
-- (connections × 1000 / (PACE_MS + latency) requests a second) below its saturation, and p50/p99
-- compare latency at equal load rather than at each proxy's own peak. wrk's timers fire on its
-- event loop's millisecond tick, so the connections send in bursts: the latencies include
-- queueing behind the burst, the same for every target. Without PACE_MS it does nothing.
local pace = os.getenv("PACE_MS")
if pace and pace ~= "" then
  local ms = tonumber(pace) or error("pace.lua: PACE_MS must be a number of milliseconds, not " .. pace)
  delay = function()
    return ms
  end
end
