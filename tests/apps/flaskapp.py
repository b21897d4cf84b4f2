"""A small Flask application, served through zchannels by tests/test_flask_e2e.py."""
import os
import time

from flask import Flask, Response, abort, jsonify, request, stream_with_context

RECORD = os.environ.get("ZCHANNELS_TEST_RECORD")
app = Flask(__name__)


def record(*fields):
    if RECORD:
        with open(RECORD, "a") as f:
            f.write(" ".join(str(x) for x in fields) + "\n")


@app.after_request
def note_close(response):
    path = request.path
    response.call_on_close(lambda: record("flask-closed", path))
    return response


@app.route("/flask/hello")
def hello():
    return "hello from flask"


@app.route("/flask/json", methods=["POST"])
def echo_json():
    data = request.get_json(silent=True)
    if data is None:
        abort(400)
    return jsonify(got=data, method=request.method)


@app.route("/flask/cookie")
def set_cookie():
    response = Response("set")
    response.set_cookie("flavour", request.args.get("v", "plain"))
    return response


@app.route("/flask/whoami")
def read_cookie():
    return f"flavour={request.cookies.get('flavour', 'none')}"


@app.route("/flask/stream")
def stream():
    gate = os.path.join(os.path.dirname(RECORD), "gate-flask")

    def parts():
        yield "a\n"
        deadline = time.monotonic() + 15
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield "b\n"

    return Response(stream_with_context(parts()), mimetype="text/plain")
