"""Schemathesis against a real server: the published v2 description
(``/v2/openapi.json``) and a v1 description written here (v1 is forsun's API,
which never published one). Check: no 5xx; the server still serves after.

``FORSUN_BOX_FUZZ_EXAMPLES`` sets examples per operation (CI: 20).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import Server
from tests.servers import unavailable

EXAMPLES = os.environ.get("FORSUN_BOX_FUZZ_EXAMPLES_HTTP", "20")
_S = {"type": "string"}
_I = {"type": "integer"}
_REPLY = {
    "200": {
        "description": "errcode/errmsg/data",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


def _q(name: str, schema: dict[str, object], required: bool = False) -> dict[str, object]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


_PLAN = {
    "type": "object",
    "properties": {
        "key": _S,
        "second": _I,
        "minute": _I,
        "hour": _I,
        "day": _I,
        "month": _I,
        "week": _I,
        "count": _I,
        "action": {"type": "string", "enum": ["shell", "http", "x"]},
        "params": {"type": "object", "additionalProperties": _S},
    },
}
_BODY = {
    "content": {
        "application/json": {
            "schema": {"oneOf": [_PLAN, {"type": "array", "items": _PLAN, "maxItems": 5}]}
        }
    }
}

V1 = {
    "openapi": "3.0.3",
    "info": {"title": "forsun HTTP API v1 (test description)", "version": "1"},
    "paths": {
        "/v1/ping": {"get": {"responses": _REPLY}},
        "/v1/plan": {
            "get": {"parameters": [_q("key", _S)], "responses": _REPLY},
            "delete": {"parameters": [_q("key", _S)], "responses": _REPLY},
            "put": {"requestBody": _BODY, "responses": _REPLY},
            "post": {"requestBody": _BODY, "responses": _REPLY},
        },
        "/v1/plan/pause": {"post": {"parameters": [_q("key", _S)], "responses": _REPLY}},
        "/v1/plan/resume": {"post": {"parameters": [_q("key", _S)], "responses": _REPLY}},
        "/v1/time": {"get": {"parameters": [_q("timestamp", _S)], "responses": _REPLY}},
        "/v1/keys": {"get": {"parameters": [_q("prefix", _S)], "responses": _REPLY}},
        "/v1/info": {"get": {"responses": _REPLY}},
    },
}


# the shell action disabled: fuzzed plans must not run commands on this machine
SERVER_ARGS = ("--shell-enabled", "false")


def _schemathesis(schema: str, base: str, workdir: Path, *extra: str) -> tuple[int, str]:
    exe = Path(sys.executable).with_name("schemathesis")
    if not exe.exists():
        unavailable("schemathesis is not installed (pip install -e '.[test]')")
    argv = [
        str(exe),
        "run",
        schema,
        "--url",
        base,
        "-n",
        EXAMPLES,
        "-c",
        "not_a_server_error",
        "--seed",
        "8",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        *extra,
    ]
    # its own working files (.schemathesis/) go to workdir, not the repository
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=workdir,
        env={**os.environ, "NO_COLOR": "1"},
    )
    return done.returncode, done.stdout + done.stderr


def _cases(output: str) -> int:
    match = re.search(r"(\d+) generated", output)
    return int(match.group(1)) if match else 0


def test_v2_openapi_fuzz_no_server_error(server: Server, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    # ndjson batches have no serializer in schemathesis; the JSON batch form is fuzzed
    rc, out = _schemathesis(
        f"{base}/v2/openapi.json", base, tmp_path, "--exclude-path", "/v2/plans:batch"
    )
    print(f"v2 fuzz cases: {_cases(out)}")
    assert rc == 0, out[-6000:]
    assert _cases(out) >= 100, out[-3000:]
    assert server.ok("GET", "/v1/ping") == {}


def test_v1_fuzz_no_server_error(server: Server, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    schema = tmp_path / "v1.json"
    schema.write_text(json.dumps(V1))
    rc, out = _schemathesis(str(schema), base, tmp_path)
    print(f"v1 fuzz cases: {_cases(out)}")
    assert rc == 0, out[-6000:]
    assert _cases(out) >= 100, out[-3000:]
    assert server.ok("GET", "/v1/ping") == {}
