-- wrk script of bench/soak.sh: counts the responses by status, and every response that is not
-- 2xx by status and by 100 ms of wall-clock time (so that soak.sh can tell which event a
-- failure follows). done() prints them, wrk's socket errors, the latency and how long before
-- the end the last response came (wrk never counts a request that is not answered at all), on
-- lines that start with "SOAK ". SOAK_DELAY_MS > 0 paces each connection (a pause before
-- each request).
local ffi = require("ffi")
ffi.cdef [[
struct soak_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clock_id, struct soak_timespec *tp);
]]
local now = ffi.new("struct soak_timespec")

-- Milliseconds of the wall clock (CLOCK_REALTIME, as `date +%s%3N` in soak.sh).
local function now_ms()
  ffi.C.clock_gettime(0, now)
  return tonumber(now.tv_sec) * 1000 + math.floor(tonumber(now.tv_nsec) / 1000000)
end

local pause = tonumber(os.getenv("SOAK_DELAY_MS") or "0") or 0
if pause > 0 then
  function delay() return pause end
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

-- Per thread (globals, read by done() through thread:get).
statuses = {}  -- status -> responses
failures = {}  -- "status slot" -> responses, where slot is the 100 ms of the wall clock (ms / 100)
last = 0       -- when the last response came (ms)

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  last = now_ms()
  if status < 200 or status > 299 then
    local key = status .. " " .. math.floor(last / 100)
    failures[key] = (failures[key] or 0) + 1
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("SOAK requests %d\n", summary.requests))
  io.write(string.format("SOAK errors connect %d read %d write %d timeout %d\n", e.connect, e.read, e.write, e.timeout))
  io.write(string.format("SOAK latency_us p50 %d p99 %d max %d\n",
    latency:percentile(50), latency:percentile(99), latency.max))
  local latest = 0
  for _, thread in ipairs(threads) do
    latest = math.max(latest, thread:get("last"))
  end
  if latest > 0 then
    io.write(string.format("SOAK last_response_ms_before_end %d\n", now_ms() - latest))
  end
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      io.write(string.format("SOAK status %d %d\n", status, n))
    end
    for key, n in pairs(thread:get("failures")) do
      io.write(string.format("SOAK fail %s %d\n", key, n))
    end
  end
end
