"""Loopback HTTP servers for network tests: a Hugging Face Hub stand-in and a plain weights file server.

Both run in a thread on 127.0.0.1 at an ephemeral port and are driven by the real clients
(huggingface_hub, urllib). :class:`HubServer` speaks the part of the Hub API that
huggingface_hub uses for ``hf_hub_download``/``snapshot_download`` (``HEAD``/``GET
/{repo}/resolve/{revision}/{path}``: a branch redirects to its commit, answers carry
``X-Repo-Commit``, ``ETag`` and ``Content-Length``), ``model_info``/``repo_info``, the tree
listing, ``create_repo``, ``create_branch`` and ``upload_folder``/``create_commit`` (the
pre-upload call answers ``regular`` for every file, so contents arrive base64-encoded in the
NDJSON commit; no LFS or Xet). Errors carry the Hub's ``X-Error-Code`` headers. ``echo_headers``
makes every error body repeat the request headers (a server that leaks the token back), and
``hang`` makes chosen routes never answer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Base:
    """Start/stop in a thread; ``release`` ends handlers that were told to hang."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self):
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.release = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self):
        server = _Server(("127.0.0.1", 0), self.handler)
        server.owner = self  # type: ignore[attr-defined]
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        """The port it listens (or listened) on: after ``stop`` nothing listens there (a refused connection)."""
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    @property
    def owner(self):
        return self.server.owner  # type: ignore[attr-defined]

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _hang(self) -> None:
        """Never answer (until the server stops): the client must give up on its own timeout."""
        self.owner.release.wait(60)
        self.close_connection = True


# ---------------------------------------------------------------------------------------------- file server


@dataclass
class FileServer(_Base):
    """Serves ``files`` (name -> bytes) at ``/<name>``; ``faults`` (name -> fault) breaks chosen files.

    Faults: ``truncate`` (announces the full length, sends half, closes), ``truncate-unannounced``
    (no ``Content-Length``, half the bytes), ``corrupt`` (same length, bytes flipped), ``500``,
    ``404``, ``hang`` (never answers), ``stall`` (headers, a few bytes, then silence).
    """

    files: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        _Base.__init__(self)

    class handler(_Handler):
        def do_GET(self):
            owner: FileServer = self.owner
            owner.requests.append((self.command, self.path))
            name = unquote(urlsplit(self.path).path).rsplit("/", 1)[-1]
            fault = owner.faults.get(name)
            if fault == "hang":
                return self._hang()
            if fault in ("500", "404") or name not in owner.files:
                status = int(fault) if fault in ("500", "404") else 404
                return self._send(status, b"error", content_type="text/plain")
            data = owner.files[name]
            if fault == "corrupt":
                data = bytes(b ^ 0x5A if i % 4096 == 100 else b for i, b in enumerate(data))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if fault != "truncate-unannounced":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if fault in ("truncate", "truncate-unannounced"):
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            if fault == "stall":
                self.wfile.write(data[:10])
                self.wfile.flush()
                return self._hang()
            self.wfile.write(data)

        do_HEAD = do_GET


# ---------------------------------------------------------------------------------------------- Hub stand-in


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _Repo:
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> path -> content
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit


@dataclass
class HubServer(_Base):
    """A Hub stand-in (see the module docstring).

    Args:
        token: the one valid write token; writes without it get 401, private reads too.
        echo_headers: error bodies repeat the request headers (a leaky server).
        hang: route names that never answer: ``create``, ``branch``, ``preupload``, ``commit``,
            ``info``, ``tree``, ``resolve``.
    """

    token: str | None = None
    echo_headers: bool = False
    hang: set[str] = field(default_factory=set)

    def __post_init__(self):
        _Base.__init__(self)
        self.repos: dict[str, _Repo] = {}
        self.lock = threading.Lock()
        self.authorizations: list[str | None] = []

    # -------------------------------------------------------------- state helpers for tests
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.branches.get(revision, revision)])

    def head(self, repo_id: str, branch: str = "main") -> str:
        return self.repos[repo_id].branches[branch]

    def add_commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main", private: bool = False) -> str:
        """Commit ``files`` on top of ``branch`` (creating the repo); returns the new commit hash."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, _Repo(private=private))
            parent = repo.branches.get(branch)
            tree = dict(repo.commits.get(parent, {})) if parent else {}
            tree.update(files)
            h = hashlib.sha1(f"{repo_id}\0{parent}\0{time.time_ns()}".encode())
            for name in sorted(tree):
                h.update(name.encode() + b"\0" + hashlib.sha256(tree[name]).digest())
            commit = h.hexdigest()
            repo.commits[commit] = tree
            repo.branches[branch] = commit
            return commit

    class handler(_Handler):
        def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None,
                   body: dict[str, Any] | None = None):
            body = {"error": message, **(body or {})}
            if self.owner.echo_headers:
                body["request_headers"] = dict(self.headers.items())
            headers = dict(extra or {})
            if code:
                headers["X-Error-Code"] = code
            headers["X-Error-Message"] = message
            self._send(status, json.dumps(body).encode(), headers)

        def _authorized(self) -> bool:
            token = self.owner.token
            return token is None or self.headers.get("Authorization") == f"Bearer {token}"

        def _json_body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            return raw

        def _route(self):
            owner: HubServer = self.owner
            path = urlsplit(self.path).path
            owner.requests.append((self.command, path))
            owner.authorizations.append(self.headers.get("Authorization"))
            body = self._json_body() if self.command in ("POST", "PUT") else b""
            routes = [
                ("POST", r"/api/repos/create", "create", self._create),
                ("POST", r"/api/validate-yaml", "yaml", lambda b: self._send(200, b'{"errors": [], "warnings": []}')),
                ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<branch>.+)", "branch", self._branch),
                ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>.+)", "preupload", self._preupload),
                ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>.+)", "commit", self._commit),
                ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", "tree",
                 self._tree),
                ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>.+))?", "info", self._info),
                ("GET", r"/api/resolve-cache/models/(?P<repo>[^/]+/[^/]+)/(?P<rev>[0-9a-f]{40})/(?P<file>.+)",
                 "resolve", self._resolve),
                ("GET", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", "resolve", self._resolve),
            ]
            method = "GET" if self.command == "HEAD" else self.command
            for m, pattern, name, fn in routes:
                match = re.fullmatch(pattern, path)
                if m == method and match:
                    if name in owner.hang:
                        return self._hang()
                    kwargs = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                    return fn(body, **kwargs) if m == "POST" else fn(**kwargs)
            return self._error(404, None, f"no route {self.command} {path}")

        do_GET = do_HEAD = do_POST = _route

        # -------------------------------------------------------------- writes
        def _create(self, body: bytes):
            if not self._authorized():
                return self._error(401, None, "Invalid credentials in Authorization header")
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            owner: HubServer = self.owner
            if repo_id in owner.repos:  # the Hub's 409 carries the repo's url too (create_repo(exist_ok=True) reads it)
                return self._error(409, None, "You already created this model repo",
                                   body={"url": f"{owner.url}/{repo_id}"})
            owner.add_commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                             private=payload.get("visibility") == "private")
            self._send(200, json.dumps({"url": f"{owner.url}/{repo_id}", "name": repo_id, "id": repo_id}).encode())

        def _repo_or_404(self, repo: str) -> _Repo | None:
            found = self.owner.repos.get(repo)
            if found is None or (found.private and not self._authorized()):
                self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}")
                return None
            return found

        def _branch(self, body: bytes, repo: str, branch: str):
            if not self._authorized():
                return self._error(401, None, "Invalid credentials in Authorization header")
            found = self._repo_or_404(repo)
            if found is None:
                return
            if branch in found.branches:
                return self._error(409, None, f"Reference already exists: refs/heads/{branch}")
            start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
            found.branches[branch] = found.branches.get(start, start)
            self._send(200, b"{}")

        def _preupload(self, body: bytes, repo: str, rev: str):
            if not self._authorized():
                return self._error(401, None, "Invalid credentials in Authorization header")
            if self._repo_or_404(repo) is None:
                return
            files = json.loads(body)["files"]
            out = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]
            self._send(200, json.dumps({"files": out, "commitOid": self.owner.head(repo)}).encode())

        def _commit(self, body: bytes, repo: str, rev: str):
            if not self._authorized():
                return self._error(401, None, "Invalid credentials in Authorization header")
            found = self._repo_or_404(repo)
            if found is None:
                return
            if rev not in found.branches:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            files: dict[str, bytes] = {}
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    if value.get("encoding") != "base64":
                        return self._error(400, None, f"unsupported encoding {value.get('encoding')!r}")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] != "header":
                    return self._error(400, None, f"this stand-in takes regular file additions only, got {item['key']}")
            commit = self.owner.add_commit(repo, files, branch=rev)
            self._send(200, json.dumps({"commitUrl": f"{self.owner.url}/{repo}/commit/{commit}", "commitOid": commit,
                                        "pullRequestUrl": None}).encode())

        # -------------------------------------------------------------- reads
        def _commit_of(self, found: _Repo, rev: str | None) -> str | None:
            rev = rev or "main"
            commit = found.branches.get(rev, rev)
            return commit if commit in found.commits else None

        def _info(self, repo: str, rev: str | None = None):
            found = self._repo_or_404(repo)
            if found is None:
                return
            commit = self._commit_of(found, rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            tree = found.commits[commit]
            self._send(200, json.dumps({"id": repo, "modelId": repo, "sha": commit, "private": found.private,
                                        "siblings": [{"rfilename": n} for n in sorted(tree)],
                                        "tags": [], "downloads": 0, "likes": 0}).encode())

        def _tree(self, repo: str, rev: str, sub: str | None = None):
            found = self._repo_or_404(repo)
            if found is None:
                return
            commit = self._commit_of(found, rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            items = [{"type": "file", "path": n, "size": len(d), "oid": _git_blob_sha1(d)}
                     for n, d in sorted(found.commits[commit].items()) if not sub or n.startswith(sub.rstrip("/") + "/")]
            self._send(200, json.dumps(items).encode())

        def _resolve(self, repo: str, rev: str, file: str):
            found = self._repo_or_404(repo)
            if found is None:
                return
            commit = self._commit_of(found, rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            if commit != rev:  # a branch: redirect to the commit, as the Hub's resolve cache does
                return self._send(307, b"", {"Location": f"/api/resolve-cache/models/{repo}/{commit}/{file}",
                                             "X-Repo-Commit": commit})
            data = found.commits[commit].get(file)
            if data is None:
                return self._error(404, "EntryNotFound", f"{file} does not exist on \"{rev}\"",
                                   {"X-Repo-Commit": commit})
            self._send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{_git_blob_sha1(data)}"'},
                       content_type="application/octet-stream")


def tree_from_folder(folder: str | Path, names: list[str] | None = None) -> dict[str, bytes]:
    """``name -> bytes`` of a folder's files (or of ``names``)."""
    folder = Path(folder)
    names = names or sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return {n: (folder / n).read_bytes() for n in names}
