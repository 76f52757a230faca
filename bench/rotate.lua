-- wrk script: every request carries the next bearer token of a file, in turn (many customers
-- in rotation), starting at a random line.
-- usage: wrk -s bench/rotate.lua URL -- tokens.txt
local tokens = {}
local position = 1

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
  end
  math.randomseed(os.time() + #tokens)
  position = math.random(#tokens)
end

function request()
  local token = tokens[position]
  position = position % #tokens + 1
  return wrk.format("GET", nil, { ["Authorization"] = token })
end
