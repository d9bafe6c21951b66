"""GET/SET throughput of the Python library impcache 1.0.2 and of redis-py asyncio (with orjson,
as impcache uses), driven by the Rust bench binary against its own redis-server.

Same workload as case 1 of the Rust benchmark: keys ``cache:1:small:{id}`` (2,000 of them, already
written by the Rust side in the same JSON format), a ~100 B JSON object, N concurrent asyncio
tasks in a closed loop. Prints one JSON object per line:
``{"case": "get 100B", "system": "py impcache", "concurrency": 16, "ops_per_sec": 1234.5}``.

    python getset.py --url redis://127.0.0.1:PORT/0 --concurrency 1,16,64,256 --seconds 0.8
"""

import argparse
import asyncio
import json
import sys
import time

import orjson
import redis.asyncio as aioredis
from impcache import Cache, RedisCacheRepository

KEYS = 2000
TTL = 300
OP_TIMEOUT = 1.0


def small(i: int) -> dict:
    """The same object as `Small::new(i)` in benches/src/lib.rs."""
    return {
        "id": i,
        "name": f"user-{i:06}",
        "email": f"user-{i:06}@example.com",
        "active": i % 2 == 0,
        "score": 0.5 + i,
        "tags": ["a", "bb", "ccc"],
    }


VALUES = [small(i) for i in range(KEYS)]


def pick(task: int, i: int) -> int:
    return (task * 7919 + i * 13) % KEYS


async def closed_loop(concurrency: int, seconds: float, op) -> tuple[float, int, str]:
    """Successful operations per second, failed operations, and the first failure."""
    stop = False
    done = [0] * concurrency
    failed = [0] * concurrency
    first_error = []

    async def worker(task: int) -> None:
        i = 0
        while not stop:
            try:
                # A bounded wait: impcache 1.0.2 can leave an operation hanging on a connection
                # another task closed.
                await asyncio.wait_for(op(task, i), OP_TIMEOUT)
                done[task] += 1
            except Exception as exc:  # counted and reported: a failing peer is a result too
                failed[task] += 1
                if not first_error:
                    first_error.append(repr(exc))
            i += 1

    start = time.perf_counter()
    tasks = [asyncio.create_task(worker(t)) for t in range(concurrency)]
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return sum(done) / elapsed, sum(failed), first_error[0] if first_error else ""


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--seconds", type=float, default=0.8)
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    # redis-py's pools are bounded (MaxConnectionsError past the limit); raise the bound for both
    # Python systems so that 256 tasks can each hold a connection.
    sep = "&" if "?" in args.url else "?"
    url = f"{args.url}{sep}max_connections=1024"
    cache = Cache(repository=RedisCacheRepository(dsn=url), key_prefix="cache", version=1)
    client = aioredis.from_url(url)
    # The keys of case 1, in case this script runs alone.
    async with client.pipeline(transaction=False) as pipe:
        for n, value in enumerate(VALUES):
            pipe.set(f"cache:1:small:{n}", orjson.dumps(value), ex=TTL)
        await pipe.execute()

    # impcache 1.0.2 closes the client (and with it the pool's connections) after every
    # operation (`RedisSession.__aexit__`), so under concurrency operations fail with
    # ConnectionError: they are counted, not hidden.
    async def imp_get(task, i):
        value = await cache.get(f"small:{pick(task, i)}")
        if value is None:
            raise RuntimeError("unexpected miss")

    async def imp_set(task, i):
        n = pick(task, i)
        await cache.set(f"small:{n}", VALUES[n], expire=TTL)

    async def raw_get(task, i):
        value = await client.get(f"cache:1:small:{pick(task, i)}")
        if value is None:
            raise RuntimeError("unexpected miss")
        orjson.loads(value)

    async def raw_set(task, i):
        n = pick(task, i)
        await client.set(f"cache:1:small:{n}", orjson.dumps(VALUES[n]), ex=TTL)

    systems = [
        ("py impcache", {"get": imp_get, "set": imp_set}),
        ("redis-py", {"get": raw_get, "set": raw_set}),
    ]
    for op in ("get", "set"):
        for concurrency in concurrencies:
            for system, ops in systems:
                await closed_loop(concurrency, min(0.2, args.seconds / 4), ops[op])
                rate, failed, error = await closed_loop(concurrency, args.seconds, ops[op])
                note = f"{failed} operations failed, first: {error}" if failed else ""
                print(
                    json.dumps(
                        {
                            "case": f"{op} 100B",
                            "system": system,
                            "concurrency": concurrency,
                            "ops_per_sec": rate,
                            "note": note,
                        }
                    ),
                    flush=True,
                )
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
