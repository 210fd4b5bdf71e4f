"""A local HTTP stand-in for the Hugging Face Hub endpoints that `textbook push` uses.

It speaks the real protocol huggingface_hub 2.4 uses for `create_repo` and `upload_folder`:
``POST /api/repos/create``, ``POST /api/validate-yaml``, ``GET /api/{type}s/{repo}/tree/{rev}``,
``POST /api/{type}s/{repo}/preupload/{rev}``, the Git LFS batch API
(``POST /{prefix}{repo}.git/info/lfs/objects/batch``) with a basic ``PUT`` transfer, and the NDJSON
``POST /api/{type}s/{repo}/commit/{rev}``. It keeps repo contents in memory and records every request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Repo:
    repo_type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)


class HubStandIn:
    """Start with ``with HubStandIn(token) as hub:``; ``hub.url`` is the endpoint to give HfApi."""

    def __init__(self, token: str, reject_all: int | None = None):
        self.token = token
        self.reject_all = reject_all  # answer every request with this status (e.g. 401)
        self.requests: list[Request] = []
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def paths(self, method: str, fragment: str) -> list[str]:
        return [r.path for r in self.requests if r.method == method and fragment in r.path]

    # --- the endpoints ----------------------------------------------------------------------------

    def handle(self, req: Request) -> tuple[int, Any]:
        path = urlsplit(req.path).path
        if self.reject_all:
            return self.reject_all, {"error": "Invalid credentials in Authorization header"}
        if req.method == "PUT" and path.startswith("/lfs-storage/"):
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(req.body).hexdigest() != oid:
                return 400, {"error": "sha256 mismatch"}
            self.lfs_objects[oid] = req.body
            return 200, {}
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}
        if req.method == "POST" and path == "/api/repos/create":
            return self._create(json.loads(req.body))
        if req.method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if req.method == "POST" and path.endswith("/info/lfs/objects/batch"):
            return self._lfs_batch(json.loads(req.body))
        parts = path.split("/")  # ['', 'api', 'datasets', org, name, action, rev...]
        if len(parts) >= 7 and parts[1] == "api":
            repo_id = f"{parts[3]}/{parts[4]}"
            repo = self.repos.get(repo_id)
            if repo is None or parts[2] != f"{repo.repo_type}s":
                return 404, {"error": "Repository not found"}
            action = parts[5]
            if req.method == "GET" and action == "tree":
                return 200, [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                             for p, b in sorted(repo.files.items())]
            if req.method == "POST" and action == "preupload":
                files = json.loads(req.body)["files"]
                return 200, {"files": [{"path": f["path"], "shouldIgnore": False, "oid": None,
                                        "uploadMode": "lfs" if f["path"].endswith(".parquet") else "regular"}
                                       for f in files]}
            if req.method == "POST" and action == "commit":
                return self._commit(repo_id, repo, req.body)
        return 404, {"error": f"stand-in has no {req.method} {path}"}

    def _create(self, payload: dict[str, Any]) -> tuple[int, Any]:
        repo_id = f"{payload['organization'] or 'me'}/{payload['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this dataset repo", "url": f"{self.url}/{repo_id}"}
        self.repos[repo_id] = Repo(payload.get("type", "model"), payload.get("visibility") == "private")
        prefix = "datasets/" if payload.get("type") == "dataset" else ""
        return 200, {"url": f"{self.url}/{prefix}{repo_id}"}

    def _lfs_batch(self, payload: dict[str, Any]) -> tuple[int, Any]:
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-storage/{obj['oid']}"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}

    def _commit(self, repo_id: str, repo: Repo, body: bytes) -> tuple[int, Any]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        for item in lines[1:]:
            value = item["value"]
            if item["key"] == "file":
                repo.files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return 422, {"error": f"LFS object {value['oid']} was never uploaded"}
                repo.files[value["path"]] = self.lfs_objects[value["oid"]]
            elif item["key"] == "deletedFile":
                repo.files.pop(value["path"], None)
        oid = hashlib.sha1(body).hexdigest()
        repo.commits.append({"summary": header["summary"], "oid": oid, "operations": lines[1:]})
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": None}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                body = self._body()
                req = Request(self.command, unquote(self.path), {k.lower(): v for k, v in self.headers.items()},
                              body)
                hub.requests.append(req)
                status, payload = hub.handle(req)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # streamed file uploads
                    chunks = []
                    while size := int(self.rfile.readline().strip().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            do_GET = do_POST = do_PUT = _serve

            def log_message(self, *args: object) -> None:
                pass

        return Handler
