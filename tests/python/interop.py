"""Drives the real Python impcache 1.0.2 against a Redis, for tests/python_interop.rs.

usage: interop.py DSN PREFIX VERSION MODE < payload.json
  write: payload {key: value}: cache.set each key, and cache.set_many under "many:" + key
  read:  payload [key, ...]: prints {"get": {key: value}, "get_many": [...], "dumps": {key: orjson bytes}}
  delete_pattern: payload "pattern": prints the count
"""
import asyncio
import json
import sys

import orjson
from impcache import Cache, RedisCacheRepository


async def main() -> None:
    dsn, prefix, version, mode = sys.argv[1:5]
    cache = Cache(
        repository=RedisCacheRepository(dsn=dsn),
        key_prefix=prefix,
        version=int(version) if version.isdigit() else version,
    )
    payload = json.loads(sys.stdin.read())
    if mode == "write":
        for key, value in payload.items():
            await cache.set(key, value, expire=100)
        await cache.set_many({"many:" + k: v for k, v in payload.items()}, expire=100)
        print(json.dumps({"ok": True}))
    elif mode == "read":
        got = {key: await cache.get(key) for key in payload}
        many = await cache.get_many(payload)
        dumps = {key: orjson.dumps(value).decode() for key, value in got.items()}
        print(json.dumps({"get": got, "get_many": many, "dumps": dumps}))
    elif mode == "delete_pattern":
        print(json.dumps(await cache.delete_pattern(payload)))
    else:
        raise SystemExit(f"unknown mode {mode}")


asyncio.run(main())
