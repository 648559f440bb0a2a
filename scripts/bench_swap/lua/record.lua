-- wrk script for hotserve's swap benchmark: POSTs one fixed body and logs every request.
--
-- Usage: wrk -t N -c N -s record.lua URL -- OUT_PREFIX BODY_FILE
-- Run with as many threads as connections: each wrk thread then drives ONE keep-alive
-- connection, so request() and response() strictly alternate in a thread and pair up.
-- Each thread writes OUT_PREFIX-<thread>.tsv, one line per request:
--   <send time, CLOCK_MONOTONIC seconds>\t<latency seconds>\t<HTTP status>\t<body digest>
-- (the digest: a small hash of the answer's first 64 bytes, 0 for none; versions that answer
-- differently tell which version answered each request)
-- (CLOCK_MONOTONIC is Python's time.monotonic() on Linux.) A request whose connection failed
-- before it was answered is logged with latency -1 and status 0. wrk calls request() once more
-- in thread 0 before any connection exists (to check for pipelining), so the first line of
-- OUT_PREFIX-0.tsv is such a -1 line and is not a request. done() prints one line
-- "WRK_SUMMARY requests=.. duration_us=.. connect=.. read=.. write=.. status=.. timeout=..".

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")

local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

-- Think time (WRK_THINK_MS, default 0 = none): each connection waits that long between an
-- answer and its next request, so the load runs below saturation. wrk looks for delay() when
-- the script loads, so it is defined only when asked for: a delay of 0 would still cost every
-- request a turn of wrk's event loop.
local think_ms = tonumber(os.getenv("WRK_THINK_MS") or "0") or 0
if think_ms > 0 then
  function delay()
    return think_ms
  end
end

local threads = {}
local counter = 0

function setup(thread)
  thread:set("thread_id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local prefix, body_file = args[1], args[2]
  local f = assert(io.open(body_file, "rb"))
  local body = f:read("*a")
  f:close()
  req = wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
  out = assert(io.open(string.format("%s-%d.tsv", prefix, thread_id), "w"))
  -- Buffered: the C library flushes open streams when wrk exits.
  out:setvbuf("full", 1048576)
  pending = nil
end

function request()
  if pending ~= nil then
    -- wrk reconnected and is writing again without an answer to the previous request.
    out:write(string.format("%.6f\t-1\t0\t0\n", pending))
  end
  pending = now()
  return req
end

local function digest(body)
  if body == nil then
    return 0
  end
  local h = 0
  for i = 1, math.min(#body, 64) do
    h = (h * 31 + string.byte(body, i)) % 1000003
  end
  return h
end

function response(status, headers, body)
  local t = now()
  if pending ~= nil then
    out:write(string.format("%.6f\t%.6f\t%d\t%d\n", pending, t - pending, status, digest(body)))
  end
  pending = nil
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_SUMMARY requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
