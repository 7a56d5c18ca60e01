#!/usr/bin/env python3
"""celery_tool.py - real Celery producers/workers for Headroom's tests.

Run it with the test-bed venv's python ($HEADROOM_CELERY_PYTHON, see
tests/scripts/env.sh; tests/scripts/install-testbed.sh makes the venv).

One self-contained file: the Celery app and its single task `tasks.work` are
built here from the command line, so a producer and a worker given the same
broker options agree on the Redis layout.

Common options (before or after the command):
  --broker redis://127.0.0.1:PORT/DB
  --sep SEP        kombu 'sep' transport option; a plain string (':') or escape
                   text ('\\x06\\x16'). Default: kombu's own (b'\\x06\\x16').
  --steps 0,3,6,9  kombu 'priority_steps'. Default: kombu's own (0,3,6,9).
  --prefix PFX     kombu 'global_keyprefix'. Default: none.
Transport options are passed to Celery only when given.

Commands:
  enqueue --queue Q --count N [--priority P] [--countdown S] [--sleep S]
      Sends N `tasks.work` tasks with apply_async(queue=Q, priority=P);
      prints {"sent": N, "t0": <time.time() right before the first send>,
      "t": <time.time() right after the last send>}.
  worker --queue Q[,Q2] --concurrency C --prefetch M [--sleep S] [--acks-late]
         [--pool prefork|solo] [--disable-prefetch] [--warm-shutdown]
      Runs a real worker in the foreground; prints READY (flushed) on stdout
      once the worker_ready signal fires. --sleep, when given, overrides the
      sleep the tasks were sent with. SIGTERM stops it: by default as a cold
      shutdown (running tasks are cancelled, prefetched ones go back to their
      queue, the unacked entries are deleted, exit code 0); --warm-shutdown
      keeps Celery's default (wait for running tasks to finish).
  keys [--detail]
      Dumps every key of the db (type, length, Python bytes repr) as JSON;
      --detail adds the unacked entries, zset scores and list heads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time

TASK_NAME = "tasks.work"


# --------------------------------------------------------------------------
# option parsing

def parse_sep(text: str) -> str:
    r"""Turns '\x06\x16' (escape text) or ':' (plain) into the separator."""
    if "\\" not in text:
        return text

    def unescape(m: re.Match) -> str:
        tok = m.group(0)
        if tok[1] in "xuU":
            return chr(int(tok[2:], 16))
        return {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r",
                "\\0": "\0"}[tok]

    return re.sub(r"\\x[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|\\U[0-9A-Fa-f]{8}"
                  r"|\\[\\tnr0]", unescape, text)


def parse_steps(text: str) -> list[int]:
    steps = sorted({int(s) for s in text.split(",") if s.strip() != ""})
    if not steps:
        raise argparse.ArgumentTypeError("empty --steps")
    return steps


def common_parser(top: bool) -> argparse.ArgumentParser:
    # The sub-command copies default to SUPPRESS, so an option given before
    # the command is not overwritten by the sub-parser's default.
    def d(value):
        return value if top else argparse.SUPPRESS

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--broker", default=d(os.environ.get(
        "HEADROOM_BROKER", "redis://127.0.0.1:6379/0")))
    p.add_argument("--sep", type=parse_sep, default=d(None))
    p.add_argument("--steps", type=parse_steps, default=d(None))
    p.add_argument("--prefix", default=d(None))
    return p


def build_parser() -> argparse.ArgumentParser:
    common = common_parser(top=False)
    p = argparse.ArgumentParser(
        description="Celery producer/worker/inspector for Headroom tests",
        parents=[common_parser(top=True)])
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("enqueue", parents=[common], help="send tasks")
    e.add_argument("--queue", default="celery")
    e.add_argument("--count", type=int, default=1)
    e.add_argument("--priority", type=int, default=None)
    e.add_argument("--countdown", type=float, default=None)
    e.add_argument("--warm", action="store_true",
                   help="connect and declare the queue before timing the sends")
    e.add_argument("--sleep", type=float, default=0.0,
                   help="seconds each task sleeps (default 0)")

    w = sub.add_parser("worker", parents=[common], help="run a worker")
    w.add_argument("--queue", default="celery",
                   help="comma-separated queues")
    w.add_argument("--concurrency", type=int, default=1)
    w.add_argument("--prefetch", type=int, default=4,
                   help="worker_prefetch_multiplier")
    w.add_argument("--sleep", type=float, default=None,
                   help="seconds each task sleeps (overrides the sent value)")
    w.add_argument("--acks-late", action="store_true")
    w.add_argument("--pool", default="prefork",
                   choices=["prefork", "solo"])
    w.add_argument("--disable-prefetch", action="store_true",
                   help="worker_disable_prefetch (celery >= 5.6)")
    w.add_argument("--warm-shutdown", action="store_true",
                   help="SIGTERM waits for running tasks (Celery default)")
    w.add_argument("--hostname", default=None)
    w.add_argument("--loglevel", default="WARNING")

    k = sub.add_parser("keys", parents=[common], help="dump the db's keys")
    k.add_argument("--detail", action="store_true")
    return p


# --------------------------------------------------------------------------
# the Celery app

def transport_options(args) -> dict:
    opts = {}
    if args.sep is not None:
        opts["sep"] = args.sep
    if args.steps is not None:
        opts["priority_steps"] = args.steps
    if args.prefix is not None:
        opts["global_keyprefix"] = args.prefix
    return opts


def make_app(args, worker_sleep=None):
    from celery import Celery

    app = Celery("tasks", broker=args.broker, set_as_current=True)
    conf = dict(
        result_backend=None,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # Priorities: kombu's Redis transport files a message of priority p
        # under <queue><sep><step>; 0..9 is the range Celery documents.
        task_queue_max_priority=9,
        task_default_priority=None,
        worker_redirect_stdouts=False,
        worker_hijack_root_logger=True,
    )
    opts = transport_options(args)
    if opts:
        conf["broker_transport_options"] = opts
    app.conf.update(conf)

    @app.task(name=TASK_NAME, ignore_result=True)
    def work(seconds=0.0):
        time.sleep(worker_sleep if worker_sleep is not None else seconds)
        return None

    return app, work


# --------------------------------------------------------------------------
# commands

def cmd_enqueue(args) -> int:
    _, work = make_app(args)
    kw = {"queue": args.queue}
    if args.priority is not None:
        kw["priority"] = args.priority
    if args.countdown is not None:
        kw["countdown"] = args.countdown
    app = work.app
    with app.producer_or_acquire() as producer:
        if args.warm:
            # A producer that has published before: connected, the queue declared. apply_async
            # on a cold app spends ~100 ms connecting and declaring, which no real producer pays
            # per task.
            producer.connection.ensure_connection()
            producer.maybe_declare(app.amqp.queues[args.queue])
        t0 = time.time()
        for _ in range(args.count):
            work.apply_async(args=(args.sleep,), producer=producer, **kw)
        t = time.time()
    print(json.dumps({"sent": args.count, "t0": t0, "t": t}), flush=True)
    return 0


def cmd_worker(args) -> int:
    if not args.warm_shutdown:
        # billiard reads this at import time: SIGTERM becomes a cold
        # shutdown (tasks cancelled, prefetched messages restored).
        os.environ["REMAP_SIGTERM"] = "SIGQUIT"
    app, _ = make_app(args, worker_sleep=args.sleep)
    app.conf.update(
        worker_prefetch_multiplier=args.prefetch,
        task_acks_late=bool(args.acks_late),
        worker_disable_prefetch=bool(args.disable_prefetch),
    )

    import warnings

    from celery import signals
    from celery.exceptions import SecurityWarning

    # Tests run as root; the "superuser privileges" warning is noise there.
    warnings.filterwarnings("ignore", category=SecurityWarning)

    @signals.worker_ready.connect(weak=False)
    def _ready(**_kw):
        out = sys.__stdout__
        out.write("READY\n")
        out.flush()

    exit_code = {"code": None}

    @signals.worker_shutting_down.connect(weak=False)
    def _shutting_down(sig=None, how=None, exitcode=None, **_kw):
        exit_code["code"] = (sig, how)

    hostname = args.hostname or f"headroom-{os.getpid()}@%h"
    argv = [
        "--quiet",  # no banner: stdout carries only READY
        "worker",
        "--queues", args.queue,
        "--concurrency", str(args.concurrency),
        "--pool", args.pool,
        "--loglevel", args.loglevel,
        "--hostname", hostname,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    try:
        app.worker_main(argv=argv)
    except SystemExit as e:
        sig_how = exit_code["code"]
        # A cold shutdown asked for by SIGTERM is our normal stop: exit 0.
        if sig_how and sig_how[0] in ("SIGTERM", "SIGQUIT") \
                and not args.warm_shutdown:
            return 0
        return e.code if isinstance(e.code, int) else 1
    return 0


def _length(r, key: bytes, kind: str):
    return {
        "list": r.llen, "hash": r.hlen, "set": r.scard, "zset": r.zcard,
        "string": r.strlen, "stream": r.xlen,
    }.get(kind, lambda _k: None)(key)


def _summarise_message(raw):
    """The bits of a kombu/Celery message worth printing."""
    try:
        msg = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
        props = msg.get("properties", {})
        return {
            "task": msg.get("headers", {}).get("task"),
            "id": msg.get("headers", {}).get("id"),
            "priority": props.get("priority"),
            "delivery_info": props.get("delivery_info"),
            "redelivered": msg.get("headers", {}).get("redelivered"),
        }
    except Exception as exc:  # debugging aid: never fail the dump
        return {"unparsed": repr(raw)[:200], "error": str(exc)}


def cmd_keys(args) -> int:
    import redis

    r = redis.Redis.from_url(args.broker)
    out = []
    for key in sorted(r.scan_iter(count=1000)):
        kind = r.type(key).decode()
        entry = {
            "key": key.decode("utf-8", "backslashreplace"),
            "repr": repr(key),
            "type": kind,
            "len": _length(r, key, kind),
        }
        if args.detail:
            if kind == "hash":
                fields = {}
                for f, v in r.hscan_iter(key):
                    try:
                        decoded = json.loads(v)
                    except ValueError:
                        fields[f.decode()] = repr(v)[:200]
                        continue
                    if isinstance(decoded, list) and len(decoded) == 3:
                        # unacked: [message, exchange, routing_key]
                        fields[f.decode()] = {
                            "exchange": decoded[1],
                            "routing_key": decoded[2],
                            "message": _summarise_message(decoded[0]),
                        }
                    else:
                        fields[f.decode()] = decoded
                entry["fields"] = fields
            elif kind == "zset":
                entry["members"] = {
                    m.decode("utf-8", "backslashreplace"): s
                    for m, s in r.zrange(key, 0, -1, withscores=True)}
            elif kind == "set":
                entry["members"] = sorted(
                    m.decode("utf-8", "backslashreplace")
                    for m in r.smembers(key))
            elif kind == "list":
                tail = r.lindex(key, -1)  # next to be consumed (BRPOP)
                entry["next"] = _summarise_message(tail)
        out.append(entry)
    db = r.connection_pool.connection_kwargs.get("db", 0)
    print(json.dumps({"db": db, "now": time.time(), "keys": out}, indent=1))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return {"enqueue": cmd_enqueue, "worker": cmd_worker,
            "keys": cmd_keys}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
