"""A tiny Hugging Face Hub look-alike for offline tests.

The server speaks just enough of the Hub HTTP API for the real ``huggingface_hub``
client (2.x) to make a full round trip against 127.0.0.1: create a repo, upload a
folder (``HfApi.upload_folder`` / ``timm.models.push_to_hf_hub``), query it
(``file_exists``, ``model_info``, ``list_repo_tree``) and download from it
(``hf_hub_download``, ``timm.create_model('hf-hub:...', pretrained=True)``).

Only model repos and the ``main`` revision are supported.  Files live as plain files
under ``root/<namespace>/<name>/<path>``; an empty directory is an empty repo.

Clients read ``HF_ENDPOINT`` (and ``HF_HOME``, ``HF_HUB_OFFLINE``...) when
``huggingface_hub`` is imported, so run them in a process whose environment is set
before the import, e.g. a subprocess with ``HF_ENDPOINT=server.url``.

Every file is uploaded inline ("regular" upload mode) and no response carries Xet or
LFS headers, so neither the ``hf_xet`` nor the LFS code path of the client is used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HubServer", "client_env", "run_client"]

DEFAULT_NAMESPACE = "user"  # used when create_repo is given a name without "ns/"
MAIN = "main"


class HubError(Exception):
    """An HTTP error answered with the ``X-Error-Code`` the client maps to an exception."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _git_blob_sha1(data: bytes) -> str:
    """Git's blob id: what the Hub returns as ``oid`` and the client compares to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _check_path(path: str) -> str:
    """Reject paths that would escape the repo directory."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


class HubServer:
    """Hub-compatible HTTP server on ``127.0.0.1`` with an ephemeral port.

    Use as a context manager (or ``start()``/``stop()``).  ``url`` is set once started
    and is what clients need as ``HF_ENDPOINT``.  ``requests`` logs every handled
    ``(method, path)`` (path unquoted, without query string) so tests can check, e.g.,
    that a cached download made no request.
    """

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.url: str | None = None
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.RLock()  # serialises commits against reads
        self._commit_counts: dict[str, int] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> "HubServer":
        """Bind an ephemeral port and serve from a daemon thread."""
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port (idempotent)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self._httpd = self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- storage ---------------------------------------------------------------------

    def repo_dir(self, repo_id: str) -> pathlib.Path:
        return self.root / repo_id

    def _existing_repo(self, ns: str, name: str, revision: str | None = MAIN) -> str:
        """Return ``ns/name`` if the repo exists (and revision is main), else raise the Hub's 404s."""
        repo_id = f"{ns}/{name}"
        if not self.repo_dir(repo_id).is_dir():
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        if revision is not None and revision != MAIN:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo_id

    def commit_sha(self, repo_id: str) -> str:
        """A 40-hex commit id that changes on every commit (and reflects the content)."""
        h = hashlib.sha1(f"{repo_id}\n{self._commit_counts.get(repo_id, 0)}\n".encode())
        for path, data in self._files(repo_id):
            h.update(f"{path}\n{_git_blob_sha1(data)}\n".encode())
        return h.hexdigest()

    def _files(self, repo_id: str):
        """Yield ``(path_in_repo, bytes)`` for every file in the repo, sorted."""
        base = self.repo_dir(repo_id)
        for p in sorted(base.rglob("*")):
            if p.is_file():
                yield p.relative_to(base).as_posix(), p.read_bytes()

    def _tree_entry(self, repo_id: str, path: str) -> dict | None:
        """The ``tree``/``paths-info`` description of one path, or None if it does not exist."""
        p = self.repo_dir(repo_id) / path
        if p.is_file():
            data = p.read_bytes()
            return {"type": "file", "path": path, "size": len(data), "oid": _git_blob_sha1(data)}
        if p.is_dir():
            oid = hashlib.sha1(f"tree {repo_id}/{path}".encode()).hexdigest()  # not a real git tree id
            return {"type": "directory", "path": path, "oid": oid}
        return None

    # -- API operations (called by the handler, return (status, json)) ---------------

    def create_repo(self, body: dict):
        """``POST /api/repos/create``: 409 (with the url, which the client still reads) if it exists."""
        if body.get("type", "model") != "model":
            raise HubError(400, "Only model repos are supported by this test server")
        name = body.get("name") or ""
        ns = body.get("organization") or DEFAULT_NAMESPACE
        _check_path(f"{ns}/{name}")
        if "/" in name:
            raise HubError(400, f"Invalid repo name {name!r}")
        repo_id = f"{ns}/{name}"
        answer = {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}
        with self._lock:
            if self.repo_dir(repo_id).exists():
                return 409, {"error": "You already created this model repo", **answer}
            self.repo_dir(repo_id).mkdir(parents=True)
        return 200, answer

    def preupload(self, ns, name, revision, body: dict):
        """Answer ``regular`` for every file so the content comes inline in the commit (no LFS/Xet)."""
        with self._lock:
            repo_id = self._existing_repo(ns, name, revision)
            files = []
            for f in body.get("files", []):
                existing = self.repo_dir(repo_id) / _check_path(f["path"])
                oid = _git_blob_sha1(existing.read_bytes()) if existing.is_file() else None
                files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
            return 200, {"files": files, "commitOid": self.commit_sha(repo_id)}

    def commit(self, ns, name, revision, lines: list[dict], query: dict):
        """Apply an NDJSON commit (``header``, ``file``, ``deletedFile``, ``deletedFolder``)."""
        if query.get("create_pr"):
            raise HubError(400, "Pull requests are not supported by this test server")
        with self._lock:
            repo_id = self._existing_repo(ns, name, revision)
            base = self.repo_dir(repo_id)
            writes, deletes = {}, []
            for line in lines:  # validate everything before touching the disk
                key, value = line.get("key"), line.get("value") or {}
                if key == "header":
                    parent = value.get("parentCommit")
                    if parent and parent != self.commit_sha(repo_id):
                        raise HubError(412, f"Parent commit {parent} is not the head of {MAIN}")
                elif key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                    writes[_check_path(value["path"])] = base64.b64decode(value["content"])
                elif key in ("deletedFile", "deletedFolder"):
                    path = _check_path(value["path"].rstrip("/"))
                    if not (base / path).exists():
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    deletes.append(base / path)
                else:  # lfsFile / copies never happen since preupload answers "regular"
                    raise HubError(400, f"Unsupported commit operation {key!r}")
            for target in deletes:
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            for path, data in writes.items():
                target = base / path
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".uploading")
                tmp.write_bytes(data)
                tmp.replace(target)
            self._commit_counts[repo_id] = self._commit_counts.get(repo_id, 0) + 1
            sha = self.commit_sha(repo_id)
        return 200, {
            "success": True,
            "commitOid": sha,
            "commitUrl": f"{self.url}/{repo_id}/commit/{sha}",
            "pullRequestUrl": None,
        }

    def model_info(self, ns, name, revision):
        """``GET /api/models/{repo}[/revision/{rev}]``: the fields ``ModelInfo`` reads (siblings with sizes)."""
        with self._lock:
            repo_id = self._existing_repo(ns, name, revision)
            siblings = [
                {"rfilename": path, "size": len(data), "blobId": _git_blob_sha1(data)}
                for path, data in self._files(repo_id)
            ]
            sha = self.commit_sha(repo_id)
        return 200, {
            "_id": sha[:24], "id": repo_id, "modelId": repo_id, "author": ns, "sha": sha,
            "private": False, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "tags": [], "siblings": siblings,
        }  # fmt: skip

    def tree(self, ns, name, revision, path: str, recursive: bool):
        """``GET /api/models/{repo}/tree/{rev}[/{path}]``: one page, no pagination ``Link`` header."""
        with self._lock:
            repo_id = self._existing_repo(ns, name, revision)
            base = self.repo_dir(repo_id)
            folder = base / _check_path(path) if path else base
            if not folder.is_dir():
                raise HubError(404, f"Path {path} not found in {repo_id}", "EntryNotFound")
            children = sorted(folder.rglob("*") if recursive else folder.iterdir())
            entries = [self._tree_entry(repo_id, c.relative_to(base).as_posix()) for c in children]
        return 200, [e for e in entries if e is not None]

    def paths_info(self, ns, name, revision, paths: list[str]):
        """``POST /api/models/{repo}/paths-info/{rev}``: entries for the paths that exist."""
        with self._lock:
            repo_id = self._existing_repo(ns, name, revision)
            entries = [self._tree_entry(repo_id, _check_path(p.strip("/"))) for p in paths]
        return 200, [e for e in entries if e is not None]

    def resolve(self, ns, name, revision, path: str):
        """File content plus the headers ``hf_hub_download`` needs (ETag, X-Repo-Commit, Content-Length).

        A missing file is a 404 ``EntryNotFound`` that still carries ``X-Repo-Commit``,
        which lets the client cache the absence like it does with the real Hub.
        """
        with self._lock:
            repo_id = self._existing_repo(ns, name, revision)
            sha = self.commit_sha(repo_id)
            target = self.repo_dir(repo_id) / _check_path(path)
            if not target.is_file():
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
            data = target.read_bytes()
        headers = {
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "X-Repo-Commit": sha,
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
            "Accept-Ranges": "none",  # Range requests are answered with the full file (200)
        }
        return data, headers


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the ``HubServer`` methods; HTTP/1.0, one request per connection."""

    server_hub: HubServer
    server_version = "HubTestServer/1.0"

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_HEAD(self):
        self._dispatch(head=True)

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def _dispatch(self, head: bool = False):
        hub = self.server_hub
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = parse_qs(split.query)
        hub.requests.append((self.command, path))
        segments = [unquote(s) for s in split.path.strip("/").split("/")]  # keeps "/" inside %2F segments
        try:
            body = self._read_body() if self.command == "POST" else b""
            if segments[:2] == ["api", "models"] and len(segments) >= 4:
                ns, name, rest = segments[2], segments[3], segments[4:]
                route = (self.command, rest[0] if rest else "")
                if route == ("GET", "") or (route == ("GET", "revision") and len(rest) == 2):
                    return self._json(*hub.model_info(ns, name, rest[1] if rest else MAIN))
                if route == ("GET", "tree") and len(rest) >= 2:
                    recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                    return self._json(*hub.tree(ns, name, rest[1], "/".join(rest[2:]), recursive))
                if route == ("POST", "paths-info") and len(rest) == 2:
                    form = parse_qs(body.decode())
                    return self._json(*hub.paths_info(ns, name, rest[1], form.get("paths", [])))
                if route == ("POST", "preupload") and len(rest) == 2:
                    return self._json(*hub.preupload(ns, name, rest[1], json.loads(body)))
                if route == ("POST", "commit") and len(rest) == 2:
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    return self._json(*hub.commit(ns, name, rest[1], lines, query))
            elif (self.command, segments[:3]) == ("POST", ["api", "repos", "create"]):
                return self._json(*hub.create_repo(json.loads(body)))
            elif (self.command, segments[:2]) == ("POST", ["api", "validate-yaml"]):
                return self._json(200, {"errors": [], "warnings": []})  # accepts any metadata
            elif self.command in ("GET", "HEAD") and len(segments) >= 5 and segments[2] == "resolve":
                data, headers = hub.resolve(segments[0], segments[1], segments[3], "/".join(segments[4:]))
                return self._send(200, data, headers, head)
            raise HubError(404, f"Not implemented by the test hub server: {self.command} {path}")
        except HubError as e:
            headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json(e.status, {"error": e.message}, headers, head)
        except (ValueError, KeyError, TypeError) as e:  # malformed request body
            self._json(400, {"error": f"Bad request: {e!r}"}, {}, head)

    def _read_body(self) -> bytes:
        """Read a request body sent with Content-Length or chunked transfer encoding."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json(self, status: int, payload, headers: dict | None = None, head: bool = False):
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}, head)

    def _send(self, status: int, data: bytes, headers: dict, head: bool = False):
        self.send_response(status, HTTPStatus(status).phrase)
        for key, value in headers.items():  # headers are latin-1: escape anything else
            self.send_header(key, str(value).encode("ascii", "backslashreplace").decode("ascii"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)


# ----------------------------------------------------------------------------- client side

def client_env(hf_home, endpoint=None, offline=False, xet=False):
    """Environment for a client process, without any HF_* setting inherited from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(
        HF_HOME=str(hf_home),
        HF_TOKEN="hf_dummy_token_for_tests",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_OFFLINE="1" if offline else "0",
    )
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"  # read by huggingface_hub>=0.32; harmless for older ones
    if endpoint is not None:
        env["HF_ENDPOINT"] = endpoint
    return env


def run_client(code, env, timeout=120, **values):
    """Run ``code`` in a subprocess; it gets ``values`` as globals and reports via ``result = {...}``."""
    prelude = "import json, sys\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())
    epilogue = "\nprint('RESULT=' + json.dumps(result))\n"
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code) + epilogue],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT=")]
    assert lines, f"client printed no result:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULT="):])
