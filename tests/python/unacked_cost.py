"""Broker cost of counting Celery's prefetched (unacked) tasks, before and after issue 12.

Fills a real redis-server with N unacked entries in kombu's layout (hash `unacked`, sorted set
`unacked_index`, values `[message, exchange, routing_key]`) and measures, with Redis's own CPU
counters (INFO cpu) and the client's clock:
  * before: the one script the scaler ran on every read of every queue set (every observation
    TTL, and on every 50 ms push poll) - all N entries decoded in one call;
  * after: the paged count (1 000 entries a call, by rank) the scaler now runs once per database
    while the unacked index keeps its size (and at most once per ten count durations under churn), whatever the number of queue sets, calls and push watchers.

    python tests/python/unacked_cost.py --port 6399 --entries 100000
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import redis

BEFORE = r"""
local min = ARGV[1]
local by_name = {}
for i = 2, #ARGV do by_name[ARGV[i]] = i - 1 end
local out = {}
for i = 1, #ARGV - 1 do out[i] = 0 end
local tags = redis.call('ZRANGEBYSCORE', KEYS[2], min, '+inf')
for i = 1, #tags, 1000 do
  local chunk = {}
  for j = i, math.min(i + 999, #tags) do chunk[#chunk + 1] = tags[j] end
  local values = redis.call('HMGET', KEYS[1], unpack(chunk))
  for j = 1, #chunk do
    local v = values[j]
    if v then
      local ok, entry = pcall(cjson.decode, v)
      if ok and type(entry) == 'table' and type(entry[3]) == 'string' then
        local q = by_name[entry[3]]
        if q then out[q] = out[q] + 1 end
      end
    end
  end
end
return out
"""

def shipped_script():
    """The paged count exactly as the scaler ships it: read from scaler/src/sources/celery.rs."""
    here = pathlib.Path(__file__).resolve().parents[2]
    src = (here / "scaler/src/sources/celery.rs").read_text()
    body = src.split("static CELERY_UNACKED_PAGE", 1)[1]
    return body.split('r"', 1)[1].split('",', 1)[0]


AFTER = shipped_script()


def cpu(r):
    info = r.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=6399)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--queues", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=10)
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    srv = subprocess.Popen(["redis-server", "--port", str(a.port), "--save", "", "--dir", d],
                           stdout=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=a.port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        now = time.time()
        pipe = r.pipeline(transaction=False)
        body = json.dumps({"body": "x" * 200, "headers": {"task": "tasks.gpu"}, "properties": {}})
        for i in range(a.entries):
            tag = f"tag-{i:08d}"
            entry = json.dumps([json.loads(body), "", f"q{i % a.queues}"])
            pipe.hset("unacked", tag, entry)
            pipe.zadd("unacked_index", {tag: now - i * 0.001})
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        names = [f"q{i}" for i in range(a.queues)]
        minimum = f"{now - 3600:.3f}"
        before = r.register_script(BEFORE)
        after = r.register_script(AFTER)

        def measure(f):
            c0, t0 = cpu(r), time.perf_counter()
            longest = 0.0
            for _ in range(a.repeat):
                longest = max(longest, f())
            return (cpu(r) - c0) / a.repeat, (time.perf_counter() - t0) / a.repeat, longest

        def one_before():
            t = time.perf_counter()
            counts = before(keys=["unacked", "unacked_index"], args=[minimum, *names])
            assert sum(counts) == a.entries, counts
            return time.perf_counter() - t

        def one_after():
            offset, total, longest = 0, 0, 0.0
            while True:
                t = time.perf_counter()
                out = after(keys=["unacked", "unacked_index"], args=[minimum, offset, 1000])
                longest = max(longest, time.perf_counter() - t)
                total += sum(int(n) for n in out[3::2])
                if out[0] < 1000:
                    break
                offset += 1000
            assert total == a.entries, total
            return longest

        b_cpu, b_wall, b_block = measure(one_before)
        a_cpu, a_wall, a_block = measure(one_after)
        print(f"entries {a.entries}, {a.queues} queues, {a.repeat} repeats each")
        print(f"before: one count {b_wall*1e3:.0f} ms, broker CPU {b_cpu*1e3:.0f} ms, "
              f"blocks the broker {b_block*1e3:.0f} ms at once")
        print(f"after:  one count {a_wall*1e3:.0f} ms, broker CPU {a_cpu*1e3:.0f} ms, "
              f"longest single call {a_block*1e3:.1f} ms")
        # Per second, per database: before, every queue set's read (1/s at the 1 s TTL) and every
        # push poll (20/s) ran the whole count; after, one count per 5 s per database.
        for sets, push in [(1, False), (1, True), (10, True)]:
            rate_before = sets * (1 + (20 if push else 0))
            print(f"  {sets} queue set(s){' with push' if push else ''}: broker CPU per second "
                  f"before {rate_before * b_cpu * 1e3:.0f} ms, after {a_cpu / 5 * 1e3:.0f} ms")
    finally:
        srv.terminate()
        srv.wait()


if __name__ == "__main__":
    sys.exit(main())
