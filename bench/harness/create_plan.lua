-- wrk script: every request creates one new delay-mode plan with PUT /v1/plan.
-- Usage: wrk -s create_plan.lua URL -- PREFIX
-- Keys are PREFIX-THREAD-COUNTER, unique per request; plans fire 30000 s from now, so
-- nothing fires during the run. Every response is checked: HTTP 200 and errcode 0.
-- done() prints one line "BENCH-JSON {...}" that the harness parses.

local threads = {}
local prefix = "w"
local counter = 0

-- globals (not locals) so that done() can read them with thread:get()
tid = 0
ok_count = 0
errcode_bad = 0
status_bad = 0

function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)
end

function init(args)
   if args[1] ~= nil then
      prefix = args[1]
   end
   wrk.method = "PUT"
   wrk.path = "/v1/plan"
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   counter = counter + 1
   local body = string.format(
      '{"key":"%s-%d-%d","seconds":30000,"count":1,"action":"http",' ..
      '"params":{"url":"http://127.0.0.1:9/never"}}',
      prefix, tid, counter)
   return wrk.format("PUT", "/v1/plan", nil, body)
end

function response(status, headers, body)
   if status ~= 200 then
      status_bad = status_bad + 1
   elseif string.find(body, '"errcode"%s*:%s*0%s*[,}]') then
      ok_count = ok_count + 1
   else
      errcode_bad = errcode_bad + 1
   end
end

function done(summary, latency, requests)
   local ok, ebad, sbad = 0, 0, 0
   for _, thread in ipairs(threads) do
      ok = ok + thread:get("ok_count")
      ebad = ebad + thread:get("errcode_bad")
      sbad = sbad + thread:get("status_bad")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH-JSON {"requests":%d,"duration_us":%d,"ok":%d,"errcode_bad":%d,' ..
      '"status_bad":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
      '"timeouts":%d,"latency_p50_us":%d,"latency_p99_us":%d,"latency_max_us":%d}\n',
      summary.requests, summary.duration, ok, ebad, sbad, e.connect, e.read, e.write,
      e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
