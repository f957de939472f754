import platform

from flask import Flask

app = Flask(__name__)


@app.route("/")
def hello():
    return f"poetry app on python {platform.python_version()}\n"
