"""A Kubeflow Pipelines API server double on loopback: answers the v2beta1 REST endpoints
seekline uses and records every request, so tests can assert what the client sent."""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class FakeKFP:
    pipelines: dict[str, dict] = field(default_factory=dict)  # id → pipeline
    versions: dict[str, list[dict]] = field(default_factory=dict)  # pipeline id → versions
    experiments: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    fail_runs_with: int | None = None  # answer POST /runs with this HTTP status

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                u = urlparse(self.path)
                req = Request(self.command, u.path, parse_qs(u.query), dict(self.headers), self.rfile.read(n))
                fake.requests.append(req)
                try:
                    status, body = fake.route(req)
                except Exception as e:  # a bug in the double must show up as a 500, not a hang
                    status, body = 500, {"error": f"fake KFP failed: {e!r}"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle  # noqa: N815 (http.server names)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    # -- routing ---------------------------------------------------------------------------
    def route(self, r: Request):  # noqa: C901 — one branch per endpoint
        p = r.path
        if p == "/apis/v2beta1/healthz":
            return 200, {"commit_sha": "fake", "tag_name": "2.0.5", "multi_user": False}
        if p == "/apis/v2beta1/pipelines" and r.method == "GET":
            flt = json.loads(r.query.get("filter", ["{}"])[0] or "{}")
            want = _wanted_names(flt)
            found = [x for x in self.pipelines.values() if not want or x["display_name"] in want]
            return 200, {"pipelines": found, "total_size": len(found)}
        if p == "/apis/v2beta1/pipelines/upload" and r.method == "POST":
            name = r.query.get("name", [""])[0]
            pid = str(uuid.uuid4())
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": name}
            self.versions[pid] = [{"pipeline_id": pid, "pipeline_version_id": str(uuid.uuid4()), "display_name": name}]
            return 200, self.pipelines[pid]
        if p == "/apis/v2beta1/pipelines/upload_version" and r.method == "POST":
            pid = r.query.get("pipelineid", [""])[0]
            if pid not in self.pipelines:
                return 404, {"error": "pipeline not found", "code": 5}
            v = {"pipeline_id": pid, "pipeline_version_id": str(uuid.uuid4()), "display_name": r.query.get("name", [""])[0]}
            self.versions[pid].append(v)
            return 200, v
        m = re.fullmatch(r"/apis/v2beta1/pipelines/([^/]+)/versions", p)
        if m and r.method == "GET":
            vs = list(reversed(self.versions.get(m.group(1), [])))
            return 200, {"pipeline_versions": vs, "total_size": len(vs)}
        if p == "/apis/v2beta1/experiments" and r.method == "GET":
            flt = json.loads(r.query.get("filter", ["{}"])[0] or "{}")
            want = _wanted_names(flt)
            found = [e for e in self.experiments.values() if not want or e["display_name"] in want]
            return 200, {"experiments": found, "total_size": len(found)}
        if p == "/apis/v2beta1/experiments" and r.method == "POST":
            body = r.json()
            eid = str(uuid.uuid4())
            self.experiments[eid] = {"experiment_id": eid, "display_name": body["display_name"]}
            return 200, self.experiments[eid]
        if p == "/apis/v2beta1/runs" and r.method == "POST":
            if self.fail_runs_with:
                return self.fail_runs_with, {"error": "run quota exceeded", "code": 8}
            body = r.json()
            return 200, {"run_id": str(uuid.uuid4()), "display_name": body["display_name"], "state": "PENDING"}
        if p == "/apis/v2beta1/recurringruns" and r.method == "POST":
            body = r.json()
            rid = str(uuid.uuid4())
            self.recurring_runs[rid] = {
                "recurring_run_id": rid,
                "display_name": body["display_name"],
                "experiment_id": body.get("experiment_id"),
                "status": "ENABLED",
            }
            return 200, self.recurring_runs[rid]
        if p == "/apis/v2beta1/recurringruns" and r.method == "GET":
            want = _wanted_names(json.loads(r.query.get("filter", ["{}"])[0] or "{}"))
            exp = r.query.get("experiment_id", [None])[0]
            found = [
                x for x in self.recurring_runs.values()
                if (not want or x["display_name"] in want) and (exp is None or x["experiment_id"] == exp)
            ]
            return 200, {"recurringRuns": found, "total_size": len(found)}
        m = re.fullmatch(r"/apis/v2beta1/recurringruns/([^/]+)", p)
        if m and r.method == "DELETE":
            if self.recurring_runs.pop(m.group(1), None) is None:
                return 404, {"error": "recurring run not found", "code": 5}
            return 200, {}
        return 404, {"error": f"fake KFP has no route {r.method} {p}", "code": 5}


def _wanted_names(flt: dict) -> set[str]:
    """Names asked for by a KFP filter (the SDK sends camelCase 'stringValue')."""
    return {
        pr.get("stringValue", pr.get("string_value"))
        for pr in flt.get("predicates", [])
        if pr.get("key") in ("display_name", "name")
    }
