-- wrk script for bench/identity: sends `Authorization: Bearer TOKEN`, the tokens read from the
-- file named by the TOKENS_FILE environment variable (one token a line), so that no token
-- appears on a command line. It reports like report.lua (one RESULT line per run) and is paced like it with PACE_MS.
--
--   one token in the file    the same request every time: wrk builds it once, as it does for
--                            a static request (no Lua on the request path)
--   N tokens                 request i carries token i mod N: with one wrk thread, each token
--                            comes back only after the N-1 others. The requests are built at
--                            start, so the per-request Lua work is one table lookup.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local path = os.getenv("TOKENS_FILE") or error("tokens.lua: set TOKENS_FILE to a file of tokens, one a line")
local tokens = {}
for line in io.lines(path) do
  if line ~= "" then tokens[#tokens + 1] = line end
end
if #tokens == 0 then error("tokens.lua: no token in TOKENS_FILE") end

if #tokens == 1 then
  wrk.headers["Authorization"] = "Bearer " .. tokens[1]
else
  local requests, n, i = {}, #tokens, 0
  -- wrk.init (wrk's own) sets the Host header, then calls this.
  init = function(args)
    for k = 1, n do
      local headers = {}
      for name, value in pairs(wrk.headers) do headers[name] = value end
      headers["Authorization"] = "Bearer " .. tokens[k]
      requests[k] = wrk.format(nil, nil, headers)
    end
    tokens = nil
  end
  request = function()
    i = i % n + 1
    return requests[i]
  end
end
