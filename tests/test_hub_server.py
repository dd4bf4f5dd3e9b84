"""Round trips of the real ``huggingface_hub`` client against ``tests/hub_server.py``.

``huggingface_hub`` reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE at import time, so the
client side always runs in a fresh subprocess with its environment set up front, while
the server runs in this process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request

import pytest

from hub_server import HubServer, client_env, run_client

pytestmark = pytest.mark.slow  # the slow tier: pytest -m slow

REPO_ID = "testorg/demo"
BINARY = bytes(range(256)) * 7 + b"\x00\xff end"  # not valid UTF-8, so it must survive base64 intact
README = "---\nlicense: apache-2.0\ntags:\n- test\n---\n# demo\n"
CONFIG = {"architecture": "demo", "num_classes": 3}


UPLOAD_AND_DOWNLOAD = """
import pathlib
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

api = HfApi()
url = api.create_repo(repo_id)
try:
    api.create_repo(repo_id)  # second time without exist_ok must be a 409
    conflict = None
except HfHubHTTPError as e:
    conflict = e.response.status_code
url_again = api.create_repo(repo_id, exist_ok=True)

folder = pathlib.Path(folder)
folder.mkdir()
(folder / "README.md").write_text(readme)
(folder / "config.json").write_text(json.dumps(config))
(folder / "sub").mkdir()
(folder / "sub" / "weights.bin").write_bytes(bytes.fromhex(binary_hex))
had_readme = api.file_exists(repo_id, "README.md")
commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="upload demo")

path = hf_hub_download(repo_id, "sub/weights.bin")
path_again = hf_hub_download(repo_id, "sub/weights.bin")
info = api.model_info(repo_id)
result = {
    "url": str(url), "url_repo_id": url.repo_id, "url_again": str(url_again), "conflict": conflict,
    "had_readme": had_readme, "has_readme": api.file_exists(repo_id, "README.md"),
    "has_missing": api.file_exists(repo_id, "missing.txt"),
    "commit_oid": commit.oid, "info_sha": info.sha, "info_id": info.id,
    "siblings": sorted((s.rfilename, s.size) for s in info.siblings),
    "tree": sorted((f.path, getattr(f, "size", None)) for f in api.list_repo_tree(repo_id, recursive=True)),
    "path": path, "path_again": path_again,
    "downloaded_hex": pathlib.Path(path).read_bytes().hex(),
}
"""


def upload_and_download(server, tmp_path, hf_home, xet=False):
    return run_client(
        UPLOAD_AND_DOWNLOAD,
        client_env(hf_home, server.url, xet=xet),
        repo_id=REPO_ID, folder=str(tmp_path / "upload"), readme=README, config=CONFIG, binary_hex=BINARY.hex(),
    )  # fmt: skip


# With hf_xet installed, upload_folder takes a different (pipelined) code path: check both.
@pytest.mark.parametrize("xet", [False, True], ids=["xet-disabled", "xet-enabled"])
def test_round_trip(tmp_path, xet):
    with HubServer(tmp_path / "hub") as server:
        res = upload_and_download(server, tmp_path, tmp_path / "hf", xet=xet)
        head_sha = server.commit_sha(REPO_ID)

    assert res["url"] == f"{server.url}/{REPO_ID}" and res["url_repo_id"] == REPO_ID
    assert res["url_again"] == res["url"]
    assert res["conflict"] == 409
    assert (res["had_readme"], res["has_readme"], res["has_missing"]) == (False, True, False)
    assert bytes.fromhex(res["downloaded_hex"]) == BINARY
    assert res["path_again"] == res["path"]
    # the file is cached under the commit the server reported
    assert f"models--testorg--demo/snapshots/{head_sha}/sub/weights.bin" in res["path"]
    assert res["commit_oid"] == res["info_sha"] == head_sha and res["info_id"] == REPO_ID
    expected_files = [["README.md", len(README)], ["config.json", len(json.dumps(CONFIG))], ["sub/weights.bin", len(BINARY)]]  # fmt: skip
    assert res["siblings"] == expected_files
    assert res["tree"] == sorted(expected_files + [["sub", None]])

    # server side: files stored as plain files, uploaded inline after the README metadata check
    repo_dir = tmp_path / "hub" / "testorg" / "demo"
    assert (repo_dir / "sub" / "weights.bin").read_bytes() == BINARY
    assert json.loads((repo_dir / "config.json").read_text()) == CONFIG
    assert (repo_dir / "README.md").read_text() == README
    handled = server.requests
    for expected in [
        ("POST", "/api/validate-yaml"),
        ("POST", f"/api/models/{REPO_ID}/preupload/main"),
        ("POST", f"/api/models/{REPO_ID}/commit/main"),
        ("GET", f"/{REPO_ID}/resolve/main/sub/weights.bin"),
    ]:
        assert expected in handled, f"{expected} not in {handled}"
    # the second hf_hub_download only checked the ETag (HEAD) and reused the cached blob
    resolve = [r for r in handled if r[1] == f"/{REPO_ID}/resolve/main/sub/weights.bin"]
    assert resolve == [("HEAD", resolve[0][1]), ("GET", resolve[0][1]), ("HEAD", resolve[0][1])]
    assert not any("xet" in path.lower() or "lfs" in path.lower() for _, path in handled), handled


OFFLINE_DOWNLOAD = """
import pathlib
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError

path = hf_hub_download(repo_id, "sub/weights.bin")
try:
    hf_hub_download(repo_id, "sub/weights.bin", cache_dir=empty_cache)
    empty_cache_error = None
except LocalEntryNotFoundError as e:
    empty_cache_error = type(e).__name__
result = {"path": path, "hex": pathlib.Path(path).read_bytes().hex(), "empty_cache_error": empty_cache_error}
"""


def test_offline_download_is_served_from_cache(tmp_path):
    hf_home = tmp_path / "hf"
    with HubServer(tmp_path / "hub") as server:
        online = upload_and_download(server, tmp_path, hf_home)
        n_requests = len(server.requests)
    assert server.url is not None and len(server.requests) == n_requests > 0

    # the server is gone: only the cache in HF_HOME can provide the file
    env = client_env(hf_home, server.url, offline=True)
    res = run_client(OFFLINE_DOWNLOAD, env, repo_id=REPO_ID, empty_cache=str(tmp_path / "empty"))
    assert res["path"] == online["path"]
    assert bytes.fromhex(res["hex"]) == BINARY
    assert res["empty_cache_error"] == "LocalEntryNotFoundError"  # i.e. nothing came from elsewhere


def test_offline_download_makes_no_request(tmp_path):
    hf_home = tmp_path / "hf"
    with HubServer(tmp_path / "hub") as server:
        upload_and_download(server, tmp_path, hf_home)
        before = list(server.requests)
        env = client_env(hf_home, server.url, offline=True)
        res = run_client(OFFLINE_DOWNLOAD, env, repo_id=REPO_ID, empty_cache=str(tmp_path / "empty"))
        assert server.requests == before
    assert bytes.fromhex(res["hex"]) == BINARY


MISSING = """
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, HfHubHTTPError

def error_of(*args, **kwargs):
    try:
        hf_hub_download(*args, **kwargs)
    except Exception as e:
        return {
            "type": type(e).__name__,
            "entry": isinstance(e, EntryNotFoundError),
            "repo": isinstance(e, RepositoryNotFoundError),
            "revision": isinstance(e, RevisionNotFoundError),
            "status": e.response.status_code if isinstance(e, HfHubHTTPError) else None,
        }
    return None

result = {
    "file": error_of(repo_id, "missing.bin"),
    "repo": error_of("testorg/does-not-exist", "config.json"),
    "revision": error_of(repo_id, "config.json", revision="v1"),
    "existing": error_of(repo_id, "config.json"),
}
"""


def test_missing_file_repo_and_revision(tmp_path):
    with HubServer(tmp_path / "hub") as server:
        # a repo is a directory of plain files, so it can be seeded without the client
        (tmp_path / "hub" / "testorg" / "demo").mkdir(parents=True)
        (tmp_path / "hub" / "testorg" / "demo" / "config.json").write_text(json.dumps(CONFIG))
        res = run_client(MISSING, client_env(tmp_path / "hf", server.url), repo_id=REPO_ID)

    assert res["existing"] is None
    # the remote (HTTP 404) flavour, not LocalEntryNotFoundError from a failed connection
    assert res["file"] == {"type": "RemoteEntryNotFoundError", "entry": True, "repo": False, "revision": False, "status": 404}  # fmt: skip
    assert res["repo"] == {"type": "RepositoryNotFoundError", "entry": False, "repo": True, "revision": False, "status": 404}  # fmt: skip
    assert res["revision"] == {"type": "RevisionNotFoundError", "entry": False, "repo": False, "revision": True, "status": 404}  # fmt: skip
    assert ("HEAD", f"/{REPO_ID}/resolve/main/missing.bin") in server.requests


def test_commit_changes_sha_and_etag(tmp_path):
    """Each commit moves X-Repo-Commit; the ETag is the sha256 of the content (checked in-process, no client)."""
    with HubServer(tmp_path / "hub") as server:
        (tmp_path / "hub" / "testorg" / "demo").mkdir(parents=True)

        def post(path, body, content_type="application/json"):
            req = urllib.request.Request(server.url + path, data=body, headers={"Content-Type": content_type})
            with urllib.request.urlopen(req) as r:
                return json.loads(r.read())

        def head(path):
            with urllib.request.urlopen(urllib.request.Request(server.url + path, method="HEAD")) as r:
                return dict(r.headers)

        def commit(content):
            lines = [
                {"key": "header", "value": {"summary": "s", "description": ""}},
                {"key": "file", "value": {"path": "a.txt", "content": base64.b64encode(content).decode(), "encoding": "base64"}},  # fmt: skip
            ]
            return post(f"/api/models/{REPO_ID}/commit/main", b"".join(json.dumps(x).encode() + b"\n" for x in lines))

        first = commit(b"one")["commitOid"]
        h1 = head(f"/{REPO_ID}/resolve/main/a.txt")
        second = commit(b"two")["commitOid"]
        h2 = head(f"/{REPO_ID}/resolve/main/a.txt")
        third = commit(b"two")["commitOid"]  # same content, still a new commit

    assert len(first) == len(second) == len(third) == 40 and len({first, second, third}) == 3
    assert (h1["X-Repo-Commit"], h2["X-Repo-Commit"]) == (first, second)
    assert h1["ETag"] == '"%s"' % hashlib.sha256(b"one").hexdigest()
    assert h2["ETag"] == '"%s"' % hashlib.sha256(b"two").hexdigest()
    assert h2["Content-Length"] == "3"
    assert (tmp_path / "hub" / "testorg" / "demo" / "a.txt").read_bytes() == b"two"


TIMM_ROUND_TRIP = """
import timm, torch
from timm.models import push_to_hf_hub

torch.manual_seed(0)
model = timm.create_model("test_resnet", num_classes=5)
push_to_hf_hub(model, repo_id, model_config={"num_classes": 5})
loaded = timm.create_model("hf-hub:" + repo_id, pretrained=True)
a, b = model.state_dict(), loaded.state_dict()
result = {
    "same_keys": list(a) == list(b),
    "same_values": all(torch.equal(a[k], b[k]) for k in a),
    "num_classes": loaded.num_classes,
}
"""


def test_timm_push_and_pretrained_load(tmp_path):
    pytest.importorskip("timm")
    with HubServer(tmp_path / "hub") as server:
        res = run_client(TIMM_ROUND_TRIP, client_env(tmp_path / "hf", server.url), repo_id="testorg/tiny")
    assert res == {"same_keys": True, "same_values": True, "num_classes": 5}
    assert {"README.md", "config.json", "model.safetensors"} <= {
        p.name for p in (tmp_path / "hub" / "testorg" / "tiny").iterdir()
    }
    assert ("GET", "/testorg/tiny/resolve/main/model.safetensors") in server.requests
