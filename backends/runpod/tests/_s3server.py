"""A local S3 server for the tests: moto's (``moto[server]``), in an environment of its own (``uv tool run``: moto
brings boto3 and six, which the test environment must not have), on 127.0.0.1, with signature checking on.

moto checks AWS Signature Version 4 only for access keys its IAM knows, so the server starts with a window of three
unauthenticated requests (``INITIAL_NO_AUTH_ACTION_COUNT``), used to create a user, its access key and a policy;
every request after that must be signed with that key, as RunPod's S3 API requires. Its request recorder
(``/moto-api/recorder``) lets a test count the writes a deploy made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any

import httpx
from gpuflex_runpod._boot import sigv4_headers

if TYPE_CHECKING:
    from collections.abc import Iterator

MOTO = "moto[server]>=5,<6"
REGION = "us-east-1"
_IAM = {"Authorization": "AWS4-HMAC-SHA256 Credential=bootstrap/20240101/us-east-1/iam/aws4_request, "
                         "SignedHeaders=host, Signature=0", "Host": "iam.amazonaws.com"}


def _uv() -> str:
    from uv import find_uv_bin

    return str(find_uv_bin())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    def __init__(self, url: str, access_key: str, secret_key: str) -> None:
        self.url = url
        self.access_key = access_key
        self.secret_key = secret_key

    def request(self, method: str, path: str, body: bytes = b"") -> httpx.Response:
        """A signed request (``path`` already percent-encoded)."""
        url = self.url + path
        headers = sigv4_headers(method, url, region=REGION, access_key=self.access_key, secret_key=self.secret_key,
                                payload_sha256=hashlib.sha256(body).hexdigest())
        headers.pop("host")
        return httpx.request(method, url, content=body, headers=headers, timeout=30)

    def keys(self, bucket: str) -> list[str]:
        text = self.request("GET", f"/{bucket}?list-type=2").text
        return re.findall(r"<Key>([^<]+)</Key>", text)

    def start_recording(self) -> None:
        httpx.post(f"{self.url}/moto-api/recorder/reset-recording", timeout=30)
        httpx.post(f"{self.url}/moto-api/recorder/start-recording", timeout=30)

    def recorded(self) -> list[dict[str, Any]]:
        """The requests since ``start_recording`` (method, url)."""
        httpx.post(f"{self.url}/moto-api/recorder/stop-recording", timeout=30)
        text = httpx.get(f"{self.url}/moto-api/recorder/download-recording", timeout=30).text
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@contextlib.contextmanager
def start_s3(log_path: str) -> Iterator[S3Server]:
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    with open(log_path, "ab") as log:
        process = subprocess.Popen([_uv(), "tool", "run", "--from", MOTO, "moto_server", "-H", "127.0.0.1", "-p",
                                    str(port)], stdout=log, stderr=log, env=env, start_new_session=True,
                                   cwd=os.path.dirname(log_path))  # its recorder writes moto_recording here
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # the first run installs moto into uv's cache
        while True:
            try:
                httpx.get(f"{url}/moto-api/", timeout=2)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's S3 server did not start (see {log_path})") from None
                time.sleep(0.2)
        httpx.post(url, data={"Action": "CreateUser", "UserName": "gpuflex", "Version": "2010-05-08"}, headers=_IAM)
        answer = httpx.post(url, data={"Action": "CreateAccessKey", "UserName": "gpuflex", "Version": "2010-05-08"},
                            headers=_IAM).text
        access = re.search(r"<AccessKeyId>(.*?)</AccessKeyId>", answer)
        secret = re.search(r"<SecretAccessKey>(.*?)</SecretAccessKey>", answer)
        assert access and secret, answer
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        httpx.post(url, data={"Action": "PutUserPolicy", "UserName": "gpuflex", "PolicyName": "s3",
                              "PolicyDocument": json.dumps(policy), "Version": "2010-05-08"}, headers=_IAM)
        yield S3Server(url, access.group(1), secret.group(1))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
