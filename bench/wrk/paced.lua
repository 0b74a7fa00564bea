-- wrk script for `bench/run --pace=MS`: every connection waits PACE_MS milliseconds (the
-- environment variable) after each response before it sends the next request, so every target
-- gets about the same offered load (connections × 1000 / (PACE_MS + latency) requests a second)
-- below its saturation, and p50/p99 compare latency at equal load rather than at each proxy's
-- own peak. wrk's timers fire on its event loop's millisecond tick, so the connections send in
-- bursts: the latencies include queueing behind the burst, the same for every target. Reports
-- like report.lua (one RESULT line per run).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local pace = tonumber(os.getenv("PACE_MS") or "") or error("paced.lua: set PACE_MS to the milliseconds between a response and the next request")

delay = function()
  return pace
end
