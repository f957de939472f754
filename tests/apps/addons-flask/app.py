"""A Flask app using bae's add-ons: visits counted in Redis, rows in PostgreSQL or MySQL
through SQLAlchemy, jobs enqueued with RQ for a worker deployment."""

import os
import socket

from flask import Flask, jsonify, request

app = Flask(__name__)
_engines = {}


def _redis():
    import redis

    return redis.from_url(os.environ["REDIS_URL"], socket_timeout=30)


def _engine(var):
    from sqlalchemy import create_engine

    if var not in _engines:
        url = os.environ[var]
        url = url.replace("mysql://", "mysql+pymysql://", 1)
        _engines[var] = create_engine(url, pool_pre_ping=True)
    return _engines[var]


def _table(engine):
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name VARCHAR(100))"))


@app.get("/")
def index():
    return jsonify(ok=True, unit=os.environ.get("BAE_UNIT"))


@app.get("/visits")
def visits():
    return jsonify(visits=_redis().incr("visits"))


@app.post("/rows/<var>")
def add_row(var):
    from sqlalchemy import text

    engine = _engine(var)
    _table(engine)
    with engine.begin() as conn:
        n = conn.execute(text("SELECT COUNT(*) FROM items")).scalar()
        conn.execute(text("INSERT INTO items (id, name) VALUES (:id, :name)"),
                     {"id": n + 1, "name": request.args.get("name", f"row{n + 1}")})
    return jsonify(id=n + 1)


@app.get("/rows/<var>")
def rows(var):
    from sqlalchemy import text

    engine = _engine(var)
    _table(engine)
    with engine.connect() as conn:
        names = [r[0] for r in conn.execute(text("SELECT name FROM items ORDER BY id"))]
    return jsonify(rows=names)


@app.post("/enqueue/<value>")
def enqueue(value):
    from rq import Queue

    job = Queue("default", connection=_redis()).enqueue("tasks.record", value)
    return jsonify(job=job.id)


@app.get("/done")
def done():
    return jsonify(done=[v.decode() for v in _redis().lrange("done", 0, -1)])


@app.get("/connect")
def connect():
    """Can this unit open a TCP connection to host:port? (the reachability test asks)"""
    host, port = request.args["host"], int(request.args["port"])
    try:
        socket.create_connection((host, port), timeout=3).close()
        return jsonify(reachable=True)
    except OSError as exc:
        return jsonify(reachable=False, error=str(exc))
