"""Files on a real local Ray through the official `inferencesh` client: local disk and a real S3-protocol server."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from conftest import APPS, free_port
from inferencesh import File as SdkFile
from inferencesh import UploadFileOptions, inference
from ray import serve

pytestmark = pytest.mark.ray
BLOB = bytes(range(256)) * 64


def check_files_end_to_end(url: str, tmp_path) -> None:
    sdk = inference(api_key="k", base_url=url)
    uploaded = sdk.files.upload(BLOB, UploadFileOptions(filename="blob.png", content_type="image/png"))
    assert uploaded["uri"].startswith(url) and uploaded["size"] == len(BLOB)
    local = tmp_path / "local input.png"
    local.write_bytes(BLOB[::-1])
    # A local path in input: the SDK uploads it itself and sends the URI.
    seen = sdk.run({"app": "file-app:inspect", "input": {"image": uploaded["uri"], "extra": [str(local)]}})["output"]
    assert seen["sha256"] == [hashlib.sha256(BLOB).hexdigest(), hashlib.sha256(BLOB[::-1]).hexdigest()]
    assert seen["filenames"] == ["blob.png", "local input.png"]
    made = sdk.run({"app": "file-app:reverse", "input": {"image": uploaded["uri"]}})["output"]["image"]
    assert set(made) == {"uri", "filename", "content_type", "size"}
    # The official File downloads it, with no key, as a downstream app would.
    downloaded = SdkFile(made["uri"])
    assert open(downloaded.path, "rb").read() == BLOB[::-1]
    assert httpx.get(made["uri"], headers={"Range": "bytes=0-9"}).content == BLOB[::-1][:10]


def test_files_on_local_storage_through_the_official_client(ray_serve, tmp_path, monkeypatch):
    monkeypatch.setenv("FILE_CACHE_DIR", str(tmp_path / "sdk-cache"))
    listen = f"127.0.0.1:{free_port()}"
    url = ray_serve.deploy("files-local", path=str(APPS / "file_app.py"), data_dir=str(tmp_path / "data"),
                           listen=listen)
    try:
        check_files_end_to_end(url, tmp_path)
        # The ingress's own door sends downloads of local files with sendfile: the same bytes, ranges too.
        check_files_end_to_end(f"http://{listen}", tmp_path)
        stored = list((tmp_path / "data" / "files" / "files").iterdir())
        assert len(stored) == 6  # per door: the upload, the SDK's auto-upload of the local path, the output
    finally:
        serve.delete("files-local")


def test_files_on_s3_through_the_official_client(ray_serve, s3_server, tmp_path, monkeypatch):
    import s3fs

    monkeypatch.setenv("FILE_CACHE_DIR", str(tmp_path / "sdk-cache"))
    root = f"s3://{s3_server.bucket}/run-{tmp_path.name}"
    url = ray_serve.deploy("files-s3", path=str(APPS / "file_app.py"), data_dir=str(tmp_path / "data"),
                           storage=root, storage_options=s3_server.storage_options)
    try:
        check_files_end_to_end(url, tmp_path)
        s3 = s3fs.S3FileSystem(**s3_server.storage_options)
        assert len(s3.ls(f"{root}/files")) == 3
        assert s3.exists(f"{root}/.signing-key")
        assert not (tmp_path / "data" / "files").exists()  # nothing went to local disk
        # The official SDK's tasks.files / tasks.delete: the task and its files leave S3 too.
        sdk = inference(api_key="k", base_url=url)
        done = sdk.run({"app": "file-app:reverse", "input": {"image": "data:image/png;base64,iVBORw0K"}})
        listed = sdk.tasks.files(done["id"]).data
        s3.invalidate_cache()
        assert [f["role"] for f in listed] == ["input", "output"] and len(s3.ls(f"{root}/files")) == 5
        sdk.tasks.delete(done["id"], files=True)
        s3.invalidate_cache()
        assert len(s3.ls(f"{root}/files")) == 3 and httpx.get(listed[1]["uri"]).status_code == 404
        assert httpx.get(f"{url}/tasks/{done['id']}").status_code == 404
    finally:
        serve.delete("files-s3")


@pytest.mark.slow
def test_a_file_uploaded_through_one_node_is_read_on_another(s3_server):
    import json
    import subprocess
    import sys

    from conftest import ROOT, free_port

    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "two_node_files.py"), s3_server.endpoint, s3_server.bucket, str(free_port())],
        capture_output=True, text=True, timeout=400, env=env, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["read_on"] == report["worker"] != report["head"]
    assert report["same_bytes"]
