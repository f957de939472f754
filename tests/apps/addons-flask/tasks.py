"""Jobs the worker deployment runs: each records its argument and which unit ran it."""

import os

import redis


def record(value: str) -> str:
    conn = redis.from_url(os.environ["REDIS_URL"])
    conn.rpush("done", f"{value}:{os.environ.get('BAE_DEPLOYMENT')}")
    return value
