import platform

from flask import Flask

app = Flask(__name__)


@app.route("/")
def hello():
    return f"flask on python {platform.python_version()}\n"
