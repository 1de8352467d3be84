"""Raw-Redis baselines: the same traffic shapes with bare stream commands.

Messages carry the fields rstick's entries carry (r, s, a, e, w), so the only
difference from the rstick figures is rstick itself.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import redis

from .harness import ROOT

STREAM = "raw:q"
PERSONAL = "raw:w"
GROUP = "g"
LATENCY = "raw:lat"


def message(step: str = "noop") -> dict[str, str]:
    return {"r": uuid.uuid4().hex, "s": step, "a": "1", "e": "0", "w": step}


def reset(r: redis.Redis) -> None:
    r.delete(STREAM, PERSONAL, LATENCY)
    for s in (STREAM, PERSONAL):
        r.xgroup_create(s, GROUP, id="0", mkstream=True)


def fill(r: redis.Redis, n: int, step: str = "noop") -> None:
    for start in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        for _ in range(min(1000, n - start)):
            pipe.xadd(STREAM, message(step))
        pipe.execute()


def enqueue_one(r: redis.Redis, n: int) -> float:
    """XADD one at a time: messages per second."""
    reset(r)
    t = time.perf_counter()
    for _ in range(n):
        r.xadd(STREAM, message())
    return n / (time.perf_counter() - t)


def enqueue_bulk(r: redis.Redis, n: int, batch: int) -> float:
    """XADD pipelined in batches: messages per second."""
    reset(r)
    t = time.perf_counter()
    for start in range(0, n, batch):
        pipe = r.pipeline(transaction=False)
        for _ in range(min(batch, n - start)):
            pipe.xadd(STREAM, message())
        pipe.execute()
    return n / (time.perf_counter() - t)


def consume(r: redis.Redis, n: int, batch: int, produce: bool) -> tuple[float, int]:
    """Read, ack and delete ``n`` messages, ``batch`` at a time, one round trip per
    batch (the acks of one batch ride with the next read); with ``produce``, each
    round trip also XADDs the next batch. Returns (seconds, round trips)."""
    done, trips, prev = 0, 0, []
    t = time.perf_counter()
    while done < n:
        pipe = r.pipeline(transaction=False)
        if prev:
            pipe.xack(STREAM, GROUP, *prev)
            pipe.xdel(STREAM, *prev)
        if produce:
            for _ in range(min(batch, n - done)):
                pipe.xadd(STREAM, message())
        pipe.xreadgroup(GROUP, "c", {STREAM: ">"}, count=batch)
        reply = pipe.execute()[-1]
        trips += 1
        prev = [eid for _, items in reply or () for eid, _ in items]
        if not prev and not produce:
            raise RuntimeError(f"raw drain: stream ran dry after {done} of {n}")
        done += len(prev)
    r.xack(STREAM, GROUP, *prev)
    r.xdel(STREAM, *prev)
    return time.perf_counter() - t, trips + 1


def drain(r: redis.Redis, n: int, batch: int = 10, waiting: int = 0) -> tuple[float, int]:
    """``n`` messages already queued (``waiting`` more behind them): (msgs/s, trips)."""
    reset(r)
    fill(r, n + waiting)
    seconds, trips = consume(r, n, batch, produce=False)
    return n / seconds, trips


def through(r: redis.Redis, n: int, batch: int = 10) -> float:
    """XADD + XREADGROUP + XACK/XDEL in one pipeline per batch: messages per second."""
    reset(r)
    seconds, _ = consume(r, n, batch, produce=True)
    return n / seconds


def chain(r: redis.Redis, runs: int, batch: int = 10) -> float:
    """Three-step chains: a from the shared stream, b and c via a personal stream;
    one round trip per batch. Returns chains per second."""
    reset(r)
    fill(r, runs, "a")
    nxt = {b"a": "b", b"b": "c"}
    finished, prev = 0, []
    t = time.perf_counter()
    for _ in range(runs * 3 + 10):
        pipe = r.pipeline(transaction=False)
        for stream, ids in prev:
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)
        pipe.xreadgroup(GROUP, "c", {PERSONAL: ">", STREAM: ">"}, count=batch)
        reply = pipe.execute()[-1]
        prev = []
        pipe = r.pipeline(transaction=False)
        for stream, items in reply or ():
            prev.append((stream, [eid for eid, _ in items]))
            for _, f in items:
                step = f[b"s"]
                if step in nxt:
                    pipe.xadd(PERSONAL, {**message(nxt[step]), "r": f[b"r"].decode()})
                else:
                    finished += 1
        pipe.execute()
        if finished >= runs:
            break
    else:
        raise RuntimeError(f"raw chain: only {finished} of {runs} finished")
    return runs / (time.perf_counter() - t)


def latency(url: str, n: int) -> list[float]:
    """XADD to a consumer blocked in XREADGROUP in another process; seconds each."""
    r = redis.Redis.from_url(url)
    reset(r)
    consumer = subprocess.Popen([sys.executable, "-m", "bench.raw", url, str(n + 10)], cwd=ROOT)
    try:
        out = []
        for i in range(n + 10):
            time.sleep(0.002)  # let the consumer go back to its blocking read
            t = time.time()
            r.xadd(STREAM, message())
            got = r.blpop([LATENCY], timeout=10)
            if got is None:
                raise RuntimeError("raw latency: the consumer did not answer")
            if i >= 10:  # the first ones warm up both sides
                out.append(float(got[1]) - t)
        return out
    finally:
        consumer.wait(10)
        r.close()


def _consumer(url: str, n: int) -> None:
    r = redis.Redis.from_url(url)
    for _ in range(n):
        reply = r.xreadgroup(GROUP, "c", {STREAM: ">"}, count=1, block=10_000)
        t = time.time()
        if not reply:
            return
        eid = reply[0][1][0][0]
        pipe = r.pipeline(transaction=False)
        pipe.xack(STREAM, GROUP, eid)
        pipe.xdel(STREAM, eid)
        pipe.rpush(LATENCY, repr(t))
        pipe.execute()


if __name__ == "__main__":
    _consumer(sys.argv[1], int(sys.argv[2]))
