-- wrk script for `bench/run --pace=MS`: report.lua's one RESULT line per run, with pace.lua's
-- wait of PACE_MS milliseconds between a connection's response and its next request.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
if (os.getenv("PACE_MS") or "") == "" then error("paced.lua: set PACE_MS to the milliseconds between a response and the next request") end
dofile(here .. "pace.lua")
