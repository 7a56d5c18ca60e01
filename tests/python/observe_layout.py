#!/usr/bin/env python3
"""observe_layout.py - re-measures the facts written in OBSERVED.md.

Run with the test-bed venv's python after tests/scripts/install-testbed.sh:

    . tests/scripts/env.sh
    "$HEADROOM_CELERY_PYTHON" tests/python/observe_layout.py [--quick]

It starts its own redis-server on a free loopback port (through
tests/scripts/start-redis.sh), drives real producers and workers through
celery_tool.py, prints one JSON report on stdout and a line per check on
stderr, and exits 1 if a check fails. About a minute (--quick: the layout
checks and the one worker scenario, ~15 s).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOL = os.path.join(HERE, "celery_tool.py")
START_REDIS = os.path.join(ROOT, "tests", "scripts", "start-redis.sh")

FAILS: list[str] = []


def check(name: str, ok: bool, detail=None):
    line = f"{'ok  ' if ok else 'FAIL'} {name}"
    if detail is not None:
        line += f"  ({detail})"
    print(line, file=sys.stderr, flush=True)
    if not ok:
        FAILS.append(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bed:
    def __init__(self):
        self.port = free_port()
        out = subprocess.run([START_REDIS, str(self.port)], check=True,
                             capture_output=True, text=True).stdout
        self.pid = int(out.strip().splitlines()[-1])

    def close(self):
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def url(self, db):
        return f"redis://127.0.0.1:{self.port}/{db}"

    def r(self, db):
        return redis.Redis(port=self.port, db=db)

    def tool(self, db, *args):
        cmd = [sys.executable, TOOL, "--broker", self.url(db), *args]
        return subprocess.run(cmd, check=True, capture_output=True,
                              text=True).stdout

    def enqueue(self, db, *args):
        return json.loads(self.tool(db, "enqueue", *args))

    def worker(self, db, *args):
        cmd = [sys.executable, TOOL, "--broker", self.url(db), "worker", *args]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True,
                             start_new_session=True)
        t0 = time.time()
        line = p.stdout.readline()  # blocks until READY (or exit)
        if line.strip() != "READY":
            p.kill()
            raise RuntimeError(f"worker not ready: {line!r}")
        return p, time.time() - t0


def keys(r) -> list[bytes]:
    return sorted(r.scan_iter(count=1000))


def settle(r, queue_keys, timeout=15.0, still=1.5):
    """Waits until list lengths and the unacked size stop changing."""
    def snap():
        return (tuple(r.llen(k) for k in queue_keys), r.hlen("unacked"))
    last, since = snap(), time.time()
    end = time.time() + timeout
    while time.time() < end:
        time.sleep(0.1)
        cur = snap()
        if cur != last:
            last, since = cur, time.time()
        elif time.time() - since >= still:
            break
    return last


def unacked_view(r, prefix=""):
    h = r.hgetall(prefix + "unacked")
    z = dict(r.zrange(prefix + "unacked_index", 0, -1, withscores=True))
    rows = []
    for tag, raw in h.items():
        v = json.loads(raw)
        rows.append({
            "tag": tag.decode(),
            "len": len(v) if isinstance(v, list) else None,
            "msg_is_object": isinstance(v[0], dict),
            "msg_tag": v[0].get("properties", {}).get("delivery_tag"),
            "exchange": v[1],
            "routing_key": v[2],
            "priority": v[0].get("properties", {}).get("priority"),
            "score": z.get(tag),
        })
    return {"hlen": len(h), "zcard": len(z),
            "same_members": set(h) == set(z), "rows": rows}


def layout(bed: Bed, report: dict):
    # default queue, no priority and priorities 0..9, default transport
    db = 0
    bed.enqueue(db, "--count", "2")
    for p in range(10):
        bed.enqueue(db, "--priority", str(p))
    bed.enqueue(db, "--queue", "gpu-a10g", "--count", "3")
    r = bed.r(db)
    got = {repr(k): (r.type(k).decode(), r.llen(k) if r.type(k) == b"list"
                     else None) for k in keys(r)}
    report["default"] = got
    lists = {k: v[1] for k, v in got.items() if v[0] == "list"}
    check("default lists", lists == {
        "b'celery'": 5, "b'celery\\x06\\x163'": 3, "b'celery\\x06\\x166'": 3,
        "b'celery\\x06\\x169'": 1, "b'gpu-a10g'": 3}, lists)
    check("binding sets for celery and gpu-a10g",
          "b'_kombu.binding.celery'" in got
          and "b'_kombu.binding.gpu-a10g'" in got)
    report["binding_members"] = sorted(
        repr(m) for m in r.smembers("_kombu.binding.gpu-a10g"))

    # custom separator and steps
    db = 1
    for p in range(10):
        bed.enqueue(db, "--sep", ":", "--steps", "0,1,2,3,4,5,6,7,8,9",
                    "--priority", str(p))
    r = bed.r(db)
    lists = {repr(k): r.llen(k) for k in keys(r) if r.type(k) == b"list"}
    report["sep_colon_steps_0_9"] = lists
    want = {"b'celery'": 1}
    want.update({f"b'celery:{i}'": 1 for i in range(1, 10)})
    check("sep ':' steps 0..9", lists == want, lists)
    report["binding_members_colon"] = sorted(
        repr(m) for m in r.smembers("_kombu.binding.celery"))

    # escape text for the default separator
    db = 2
    bed.enqueue(db, "--sep", r"\x06\x16", "--priority", "7")
    r = bed.r(db)
    lists = [repr(k) for k in keys(r) if r.type(k) == b"list"]
    check("--sep '\\x06\\x16' is the default sep", lists ==
          ["b'celery\\x06\\x166'"], lists)

    # global_keyprefix
    db = 3
    for p in (0, 5, 9):
        bed.enqueue(db, "--prefix", "pfx_", "--priority", str(p))
    r = bed.r(db)
    got = [repr(k) for k in keys(r)]
    report["prefix"] = got
    check("prefix keys", {"b'pfx_celery'", "b'pfx_celery\\x06\\x163'",
                          "b'pfx_celery\\x06\\x169'",
                          "b'pfx__kombu.binding.celery'"} <= set(got)
          and all(k.startswith("b'pfx_") for k in got), got)
    report["prefix_binding_members"] = sorted(
        repr(m) for m in r.smembers("pfx__kombu.binding.celery"))


def worker_case(bed: Bed, report: dict, name: str, db: int, n: int,
                worker_args: list[str], enqueue_args=(), prefix="",
                queue="work", stop=signal.SIGTERM):
    common = ["--prefix", prefix] if prefix else []
    sent = bed.enqueue(db, *common, "--queue", queue, "--count", str(n),
                       *enqueue_args)
    r = bed.r(db)
    qkeys = [k for k in keys(r) if r.type(k) == b"list"]
    p, ready_s = bed.worker(db, *common, "--queue", queue, "--sleep", "300",
                            *worker_args)
    t_ready = time.time()
    lens, _ = settle(r, qkeys)
    left = sum(lens)
    u = unacked_view(r, prefix)
    res = {
        "sent": sent["sent"], "worker_args": worker_args,
        "ready_after_s": round(ready_s, 2),
        "left_in_lists": left, "removed": n - left,
        "unacked": u["hlen"], "unacked_index": u["zcard"],
        "same_members": u["same_members"],
        "keys": [repr(k) for k in keys(r)],
    }
    if u["rows"]:
        row = u["rows"][0]
        res["unacked_value"] = {k: row[k] for k in
                                ("len", "msg_is_object", "exchange",
                                 "routing_key", "priority")}
        res["field_is_delivery_tag"] = all(
            x["tag"] == x["msg_tag"] for x in u["rows"])
        res["routing_keys"] = sorted({x["routing_key"] for x in u["rows"]})
        scores = [x["score"] for x in u["rows"]]
        res["score_minus_enqueue_t"] = [round(min(scores) - sent["t"], 3),
                                        round(max(scores) - sent["t"], 3)]
        res["scores_are_epoch_seconds"] = all(
            sent["t"] - 1 <= s <= time.time() + 1 for s in scores)
    # stop it and see what is left
    t0 = time.time()
    if stop == signal.SIGKILL:
        os.killpg(p.pid, signal.SIGKILL)
    else:
        p.send_signal(stop)
    try:
        rc = p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        rc = "timeout"
    res["stop"] = {"signal": signal.Signals(stop).name, "rc": rc,
                   "seconds": round(time.time() - t0, 2),
                   "left_in_lists": sum(r.llen(k) for k in qkeys),
                   "unacked": r.hlen(prefix + "unacked"),
                   "unacked_index": r.zcard(prefix + "unacked_index")}
    if stop == signal.SIGKILL:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    report[name] = res
    return res


def workers(bed: Bed, report: dict, quick: bool):
    c1m4 = ["--concurrency", "1", "--prefetch", "4"]
    res = worker_case(bed, report, "prefork_c1_m4", 4, 10, c1m4)
    check("c1/m4 prefork: 5 tasks leave the list (4 unacked + 1 running)",
          res["removed"] == 5 and res["unacked"] == 4, res["removed"])
    check("unacked value = [message object, '', queue name]",
          res.get("unacked_value", {}).get("len") == 3
          and res["unacked_value"]["msg_is_object"]
          and res["unacked_value"]["exchange"] == ""
          and res["routing_keys"] == ["work"], res.get("unacked_value"))
    check("unacked field = delivery tag; index has the same members",
          res.get("field_is_delivery_tag") and res["same_members"])
    check("unacked_index score = epoch seconds",
          res.get("scores_are_epoch_seconds"))
    check("SIGTERM: exit 0, unacked emptied, prefetched tasks back",
          res["stop"]["rc"] == 0 and res["stop"]["unacked"] == 0
          and res["stop"]["left_in_lists"] == 9, res["stop"])
    if quick:
        return

    res = worker_case(bed, report, "prefork_c1_m4_acks_late", 5, 10,
                      c1m4 + ["--acks-late"])
    check("c1/m4 acks_late: 4 leave the list, 4 unacked",
          res["removed"] == 4 and res["unacked"] == 4, res["removed"])
    check("acks_late SIGTERM: all 10 back, unacked empty",
          res["stop"]["left_in_lists"] == 10 and res["stop"]["unacked"] == 0,
          res["stop"])

    res = worker_case(bed, report, "prefork_c1_m4_prefix", 6, 10, c1m4,
                      prefix="pfx_")
    check("prefix: unacked keys are pfx_unacked / pfx_unacked_index",
          "b'pfx_unacked'" in res["keys"]
          and "b'pfx_unacked_index'" in res["keys"]
          and "b'unacked'" not in res["keys"] and res["unacked"] == 4,
          res["keys"])

    res = worker_case(bed, report, "prefork_c2_m4", 7, 20,
                      ["--concurrency", "2", "--prefetch", "4"])
    check("c2/m4 prefork: 10 leave the list (8 unacked + 2 running)",
          res["removed"] == 10 and res["unacked"] == 8, res["removed"])

    res = worker_case(bed, report, "prefork_c1_m1", 8, 10,
                      ["--concurrency", "1", "--prefetch", "1"])
    check("c1/m1 prefork: 2 leave the list", res["removed"] == 2,
          res["removed"])

    res = worker_case(bed, report, "solo_c1_m4", 9, 10,
                      c1m4 + ["--pool", "solo"])
    check("solo c1/m4 (recorded, no expectation)", True, res["removed"])

    res = worker_case(bed, report, "prefork_c1_m4_disable_prefetch", 10, 10,
                      c1m4 + ["--disable-prefetch"])
    check("disable_prefetch c1/m4 (recorded, no expectation)", True,
          res["removed"])

    res = worker_case(bed, report, "prefork_c1_m4_priority9", 11, 10, c1m4,
                      enqueue_args=["--priority", "9"])
    check("priority 9 tasks: unacked routing key is still the queue name",
          res.get("routing_keys") == ["work"], res.get("routing_keys"))

    res = worker_case(bed, report, "prefork_c1_m4_sigkill", 12, 10, c1m4,
                      stop=signal.SIGKILL)
    check("SIGKILL: unacked entries stay behind",
          res["stop"]["unacked"] == 4 and res["stop"]["left_in_lists"] == 5,
          res["stop"])


def versions() -> dict:
    import celery
    import kombu
    out = subprocess.run(["redis-server", "--version"], capture_output=True,
                         text=True).stdout.split()
    server = next((w[2:] for w in out if w.startswith("v=")), "?")
    return {"celery": celery.__version__, "kombu": kombu.__version__,
            "redis-py": redis.__version__, "redis-server": server,
            "python": sys.version.split()[0]}


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    report = {"versions": versions()}
    bed = Bed()
    try:
        layout(bed, report)
        workers(bed, report, quick)
    finally:
        bed.close()
    report["failed"] = FAILS
    print(json.dumps(report, indent=1))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
