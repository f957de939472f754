import platform

from flask import Flask

app = Flask(__name__)


@app.route("/")
def hello():
    return f"uv app on python {platform.python_version()}\n"
