-- wrk script: every request carries a bearer token picked at random from a file.
-- usage: wrk -s bench/bearer.lua URL -- tokens.txt
local tokens = {}

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  math.randomseed(os.time() + #tokens)
end

function request()
  local token = tokens[math.random(#tokens)]
  return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. token })
end
