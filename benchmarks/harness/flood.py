#!/usr/bin/env python3
# ruff: noqa: B007, UP031  (a copy of the external harness, kept close enough to diff)
"""Publish a realistic Celery event stream straight into the broker.

No worker runs: every event goes through celery's own EventDispatcher
(``app.events.Dispatcher``), i.e. the same envelope, routing keys
(``task.sent``, ``task.succeeded``, ``worker.heartbeat``, ``task.multi``...)
and Lamport clock a real client / worker would produce.

Per task: task-sent (client host) -> task-received -> task-started ->
task-succeeded (1 in --fail-every: task-failed with exception + traceback)
on one of --workers worker hosts; 20 task names, each bound to one of 3 queues.
Each worker host also sends worker-online once and worker-heartbeat every
--heartbeat seconds.

--pipeline K   pipeline K PUBLISH commands per Redis round trip through
               kombu's Producer.batch() (0 = one round trip per event).
--multi K      worker-side task events are buffered like a prefork worker
               with an event loop (buffer_group=['task']) and sent as
               ``task.multi`` lists of K events (0 = one message per event).
--procs P      P publisher processes, tasks split i % P.
--rate R       total tasks/s over all processes (0 = as fast as possible).

Prints one JSON line with totals to stdout.  Every loop is bounded by the
task count and by --max-seconds.
"""
import argparse
import json
import multiprocessing as mp
import random
import sys
import time
import uuid as uuidlib

from celery import Celery
from kombu.clocks import LamportClock

MODULES = ["billing", "emails", "reports", "search", "media"]
VERBS = ["send", "process", "sync", "rebuild"]
TASK_NAMES = [f"app.tasks.{m}.{v}_{m}" for m in MODULES for v in VERBS]
QUEUES = ["celery", "priority", "reports"]
EXC = [
    ("ValueError", "invalid literal for int() with base 10: 'abc'"),
    ("KeyError", "'customer_id'"),
    ("TimeoutError", "upstream took longer than 30s"),
    ("ConnectionError", "Error 111 connecting to db:5432. Connection refused."),
]
TB = ('Traceback (most recent call last):\n'
      '  File "/usr/local/lib/python3.11/site-packages/celery/app/trace.py", '
      'line 453, in trace_task\n    R = retval = fun(*args, **kwargs)\n'
      '  File "/app/app/tasks/{mod}.py", line {line}, in {fn}\n'
      '    return do_work(payload)\n{exc}: {msg}\n')


def worker_info(processed, active, hb_freq):
    return dict(freq=hb_freq, sw_ident="py-celery", sw_ver="5.7.0",
                sw_sys="Linux", active=active, processed=processed,
                loadavg=[round(random.uniform(0.2, 3.0), 2) for _ in range(3)])


def run_proc(idx, a, out_q):
    rnd = random.Random(a.seed * 1000 + idx)
    random.seed(a.seed * 1000 + idx)
    app = Celery(broker=a.broker)
    conn = app.connection_for_write()
    conn.ensure_connection(max_retries=3)
    ch = conn.channel()
    workers = [f"celery@worker-{w + 1}" for w in range(a.workers)]
    clients = [f"gen{40000 + idx * 10 + c}@web-{c + 1}" for c in range(2)]
    # one dispatcher (own hostname, pid, Lamport clock) per fake node;
    # all share one Producer so a pipeline batch keeps global order.
    shared = None
    disp = {}
    for h in clients + workers:
        is_worker = h in workers
        d = app.events.Dispatcher(
            channel=ch, hostname=h,
            buffer_group=["task"] if (is_worker and a.multi) else None,
            buffer_limit=max(a.multi, 1))
        d.pid = rnd.randint(7, 65000)
        d.clock = LamportClock()       # every node has its own clock
        if shared is None:
            shared = d.producer
        d.producer = shared
        disp[h] = d
    my_workers = [w for j, w in enumerate(workers) if j % a.procs == idx % a.procs] \
        if a.procs <= len(workers) else ([workers[idx]] if idx < len(workers) else [])
    processed = {w: 0 for w in workers}
    my_tasks = range(idx, a.n, a.procs)
    per_proc_rate = (a.rate / a.procs) if a.rate > 0 else 0.0
    chunk = a.chunk
    sent = 0
    t0 = time.time()
    deadline = t0 + a.max_seconds
    next_hb = t0
    ctx = shared.batch(a.pipeline) if a.pipeline > 0 else None
    if ctx is not None:
        ctx.__enter__()
    try:
        for w in my_workers:
            disp[w].send("worker-online", **worker_info(0, 0, a.heartbeat))
            sent += 1
        tasks = list(my_tasks)
        for c0 in range(0, len(tasks), chunk):
            now = time.time()
            if now > deadline:
                break
            if per_proc_rate:
                due = t0 + c0 / per_proc_rate
                if due > now:
                    if ctx is not None:      # don't hold events while idle
                        ctx.__exit__(None, None, None)
                    time.sleep(min(due - now, 1.0))
                    if ctx is not None:
                        ctx = shared.batch(a.pipeline)
                        ctx.__enter__()
            if now >= next_hb:
                for w in my_workers:
                    disp[w].send("worker-heartbeat", **worker_info(
                        processed[w], rnd.randint(0, 8), a.heartbeat))
                    sent += 1
                next_hb = now + a.heartbeat
            batch = []
            for i in tasks[c0:c0 + chunk]:
                name = TASK_NAMES[i % len(TASK_NAMES)]
                q = QUEUES[(i % len(TASK_NAMES)) % len(QUEUES)]
                u = str(uuidlib.UUID(int=rnd.getrandbits(128), version=4))
                w = workers[rnd.randrange(len(workers))]
                args = f"({rnd.randint(1, 10**6)}, '{name.rsplit('.', 1)[1]}')"
                kwargs = "{'priority': %d, 'retry': False}" % rnd.randint(0, 9)
                ts = time.time()
                t_recv = ts + rnd.uniform(0.001, 0.02)
                t_start = t_recv + rnd.uniform(0.0005, 0.005)
                runtime = min(rnd.lognormvariate(-3.0, 1.2), 60.0)
                batch.append((u, name, q, w, args, kwargs, ts, t_recv, t_start, runtime, i))
            # interleave like a busy cluster: all sent, then received, ...
            for (u, name, q, w, args, kwargs, ts, *_r) in batch:
                disp[clients[hash(u) & 1]].send(
                    "task-sent", uuid=u, root_id=u, parent_id=None, name=name,
                    args=args, kwargs=kwargs, retries=0, eta=None, expires=None,
                    queue=q, exchange="", routing_key=q, timestamp=ts)
            for (u, name, q, w, args, kwargs, ts, t_recv, *_r) in batch:
                disp[w].send("task-received", uuid=u, name=name, args=args,
                             kwargs=kwargs, root_id=u, parent_id=None,
                             retries=0, eta=None, expires=None, timestamp=t_recv)
            for (u, name, q, w, args, kwargs, ts, t_recv, t_start, *_r) in batch:
                disp[w].send("task-started", uuid=u, timestamp=t_start)
            for (u, name, q, w, args, kwargs, ts, t_recv, t_start, runtime, i) in batch:
                t_done = t_start + runtime
                if a.fail_every and i % a.fail_every == a.fail_every - 1:
                    exc, msg = EXC[i % len(EXC)]
                    mod = name.split(".")[2]
                    disp[w].send("task-failed", uuid=u,
                                 exception=f"{exc}({msg!r})",
                                 traceback=TB.format(mod=mod, line=40 + i % 200,
                                                     fn=name.rsplit(".", 1)[1],
                                                     exc=exc, msg=msg),
                                 timestamp=t_done)
                else:
                    disp[w].send("task-succeeded", uuid=u,
                                 result=repr({"ok": True, "rows": i % 97}),
                                 runtime=runtime, timestamp=t_done)
                processed[w] += 1
            sent += 4 * len(batch)
        if a.multi:
            for w in workers:
                disp[w].flush()
        if ctx is not None:
            ctx.__exit__(None, None, None)
            ctx = None
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    dt = time.time() - t0
    conn.release()
    out_q.put({"proc": idx, "events": sent, "tasks": len(tasks), "seconds": round(dt, 3),
               "t0": t0, "t1": t0 + dt})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", default="redis://127.0.0.1:6391/0")
    p.add_argument("-n", type=int, default=20000, help="tasks (4 events each)")
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--rate", type=float, default=0.0, help="total tasks/s, 0=max")
    p.add_argument("--pipeline", type=int, default=200)
    p.add_argument("--multi", type=int, default=0)
    p.add_argument("--chunk", type=int, default=16, help="tasks interleaved per step")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--fail-every", type=int, default=10)
    p.add_argument("--heartbeat", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=600.0)
    a = p.parse_args(argv)
    if not a.broker.startswith(("redis://127.0.0.1", "redis://localhost")):
        sys.exit("refusing non-loopback broker")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    t0 = time.time()
    ps = [ctx.Process(target=run_proc, args=(i, a, q), daemon=True) for i in range(a.procs)]
    for pr in ps:
        pr.start()
    res = []
    give_up = time.time() + a.max_seconds + 60
    while len(res) < len(ps) and time.time() < give_up:
        try:
            res.append(q.get(timeout=0.5))
        except Exception:     # queue.Empty: stop waiting once every child is gone
            if not any(pr.is_alive() for pr in ps) and q.empty():
                break
    for pr in ps:
        pr.join(timeout=10)
        if pr.is_alive():
            pr.kill()
    dt = time.time() - t0
    ev = sum(r["events"] for r in res)
    t_pub0 = min((r["t0"] for r in res), default=t0)
    t_pub1 = max((r["t1"] for r in res), default=t0)
    pub_s = max(t_pub1 - t_pub0, 1e-9)
    print(json.dumps({"tasks": sum(r["tasks"] for r in res), "events": ev,
                      "seconds": round(dt, 3), "publish_seconds": round(pub_s, 3),
                      "events_per_s": round(ev / pub_s, 1),
                      "t_first_publish": t_pub0, "t_last_publish": t_pub1,
                      "procs": a.procs, "pipeline": a.pipeline, "multi": a.multi,
                      "per_proc": res}), flush=True)
    return 0 if len(res) == a.procs else 1


if __name__ == "__main__":
    sys.exit(main())
