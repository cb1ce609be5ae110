"""The operator's secret for ``pyanamo local``: only the user who started the endpoint can use it.

dynalite checks no credentials, and whoever can write the queue's items can run commands as the
operator's workers. So ``pyanamo local`` makes a random secret once per user, in a file only that
user can read (``$XDG_CONFIG_HOME/pyanamo/local-secret``, mode 0600 in a 0700 folder), and the
endpoint serves only requests signed with it (AWS Signature Version 4: the secret never travels).
Each answer carries ``x-pyanamo-proof``, an HMAC of the request's signature keyed with the secret:
the operator's CLI and workers refuse an endpoint on 127.0.0.1 that cannot show it, so another
user who takes the port while the endpoint is down cannot pose as it.

``PYANAMO_LOCAL_SECRET_FILE`` names another file (tests that run other servers on 127.0.0.1 set it
to a path that does not exist, which turns this off for their processes).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any

from .errors import PyAnamoError

FILE_VARIABLE = "PYANAMO_LOCAL_SECRET_FILE"
PROOF_HEADER = "x-pyanamo-proof"
ACCESS_KEY = "pyanamo-local"


def secret_path() -> Path:
    if os.environ.get(FILE_VARIABLE):
        return Path(os.environ[FILE_VARIABLE])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pyanamo" / "local-secret"


def read_secret() -> str | None:
    """This user's secret, if ``pyanamo local`` made one."""
    try:
        return secret_path().read_text().strip() or None
    except OSError:
        return None


def ensure_secret() -> str:
    """This user's secret, made now (0600) if there is none yet."""
    found = read_secret()
    if found:
        return found
    path = secret_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another pyanamo local made it meanwhile
        return read_secret() or ensure_secret()
    except OSError as exc:
        raise PyAnamoError(f"cannot write the endpoint's secret {path}: {exc.strerror}") from None
    value = secrets.token_hex(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def proof(secret: str, signature: str) -> str:
    return hmac.new(secret.encode(), signature.encode(), hashlib.sha256).hexdigest()


class ProofCheck:
    """botocore event handlers that refuse an answer without the endpoint's proof."""

    def __init__(self, secret: str, url: str) -> None:
        self.secret = secret
        self.url = url
        self._sent = threading.local()  # one request at a time per thread: its signature

    def register(self, client: Any) -> None:
        client.meta.events.register("before-send.dynamodb", self.remember)
        client.meta.events.register("before-parse.dynamodb", self.check)

    def remember(self, request: Any, **_: Any) -> None:
        auth = request.headers.get("Authorization", b"")
        self._sent.signature = signature_of(auth.decode() if isinstance(auth, bytes) else str(auth))

    def check(self, response_dict: dict[str, Any], **_: Any) -> None:
        if not 200 <= int(response_dict.get("status_code", 0)) < 300:
            return  # an error carries no data: a refusal or a throttle may come from anywhere
        shown = response_dict.get("headers", {}).get(PROOF_HEADER, "")
        expected = proof(self.secret, getattr(self._sent, "signature", ""))
        if not hmac.compare_digest(str(shown), expected):
            raise PyAnamoError(
                f"the endpoint {self.url} cannot prove it is your pyanamo local (another program, perhaps "
                f"another user's, holds its port): refusing it")


_AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=[^/]*/(\d{8})/([^/]+)/([^/]+)/aws4_request, ?"
                   r"SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$")


def bad_signature(secret: str, method: str, path: str, query: str, headers: dict[str, str],
                  body: bytes) -> str | None:
    """Why a request was not signed with ``secret`` (AWS Signature Version 4), or None if it was.
    ``headers`` by lower-case name. The same check as ``dynalite_server.js``'s, for moto."""
    found = _AUTH.match(headers.get("authorization", ""))
    stamp = headers.get("x-amz-date")
    if found is None or not stamp:
        return "the request is not signed"
    day, region, service, signed, signature = found.groups()
    canonical = "\n".join([
        method, path, query,
        "".join(f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed.split(";")),
        signed, headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest(),
    ])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, f"{day}/{region}/{service}/aws4_request",
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if hmac.compare_digest(expected, signature):
        return None
    return "the signature was not made with the secret of the user who started this endpoint"


def signature_of(authorization: str) -> str:
    return authorization.rpartition("Signature=")[2]
