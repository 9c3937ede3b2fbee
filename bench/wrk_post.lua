-- wrk script of bench/run.sh: every request is a POST whose body is exactly
-- BENCH_BODY_BYTES bytes (one repeated letter; the demo component echoes it).
local size = tonumber(os.getenv("BENCH_BODY_BYTES"))
if size == nil then
  error("wrk_post.lua: set BENCH_BODY_BYTES to the body size in bytes")
end

wrk.method = "POST"
wrk.body = string.rep("x", size)
wrk.headers["Content-Type"] = "application/octet-stream"
