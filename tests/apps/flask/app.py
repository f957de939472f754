import os

from flask import Flask

app = Flask(__name__)


@app.route("/")
def hello():
    return f"hello from flask on {os.environ.get('DYNO', '?')}\n"
