"""§10.3 webhook push: POST of the ClaimDelivery as proto3 JSON (camelCase,
int64 as strings) over TLS verified against the insurer's registered CA (or
the system roots), the hub's client certificate when asked, signed per §10.1
over the raw body with the method line `POST <path>`.

Taken: a 2xx or 409 answer, complete within the timeout, of at most 64 KiB,
empty or JSON/plain text; a 2xx JSON answer may carry the insurer's decision
(§10.6). Whatever the insurer sends, at most 64 KiB of it is
read (never an endless body), redirects are not followed (a claim goes only
where registered), and nothing of its text is kept."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl

import aiohttp
from google.protobuf import json_format
from yarl import URL

from iclaim_hub.common import tracing
from services.insurer_adapter import push_answer
from services.insurer_adapter.domain import (
    ACCEPTS_DECISION_HEADER,
    MAX_ANSWER_BYTES,
    PushError,
    answer_is_json,
    answer_type_ok,
    http_error,
    http_taken,
)
from services.insurer_adapter.model import Delivery, Endpoint, PushResult
from services.insurer_adapter.push_auth import signed_headers
from services.insurer_adapter.pushers import ClientIdentity, ClientPool, claim_delivery, unconfigured_identity


def webhook_body(delivery: Delivery) -> bytes:
    """The ClaimDelivery in the proto3 JSON mapping (§10.3)."""
    document = json_format.MessageToDict(claim_delivery(delivery))
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def method_line(url: URL) -> str:
    """`POST <request path>` (§10.1), the path as sent on the wire."""
    return f"POST {url.raw_path or '/'}"


def ssl_context(ca_pem: str, identity: ClientIdentity | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if identity is not None:
        context.load_cert_chain(identity.cert_path, identity.key_path)
    return context


class WebhookPusher:
    def __init__(self, timeout_s: float, identity: ClientIdentity | None, max_inflight: int) -> None:
        self._timeout_s = timeout_s
        self._identity = identity
        self._max_inflight = max_inflight
        self._sessions: ClientPool[aiohttp.ClientSession] = ClientPool(self._close_session, timeout_s + 1)

    @staticmethod
    async def _close_session(session: aiohttp.ClientSession) -> None:
        await session.close()

    def _session(self, endpoint: Endpoint) -> aiohttp.ClientSession:
        ca_digest = hashlib.sha256(endpoint.ca_pem.encode()).hexdigest() if endpoint.ca_pem else ""
        shape = (ca_digest, endpoint.mtls)

        def build() -> aiohttp.ClientSession:
            context = ssl_context(endpoint.ca_pem, self._identity if endpoint.mtls else None)
            connector = aiohttp.TCPConnector(ssl=context, limit=self._max_inflight)
            return aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                trust_env=False,  # no proxy from the environment between us and the insurer
                auto_decompress=False,  # a compressed answer must not inflate past what we read
            )

        return self._sessions.get(endpoint.insurer_code, shape, build)

    async def push(self, endpoint: Endpoint, delivery: Delivery) -> PushResult:
        refused = unconfigured_identity(endpoint, self._identity)
        if refused is not None or endpoint.key is None:
            return refused or PushResult(False, PushError.INTERNAL.value)
        try:
            url = URL(endpoint.target)
        except (ValueError, TypeError):
            return PushResult(False, PushError.ENDPOINT_INVALID.value)
        if url.scheme != "https" or not url.host:
            return PushResult(False, PushError.ENDPOINT_INVALID.value)
        body = webhook_body(delivery)
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "accept-encoding": "identity",
            ACCEPTS_DECISION_HEADER: "true",  # this hub takes a decision in the answer (§10.6)
            **dict(signed_headers(endpoint.key, method_line(url), body)),
            **dict(tracing.outgoing_headers()),  # not signed: only names the trace
        }
        try:
            session = self._session(endpoint)
            async with asyncio.timeout(self._timeout_s):
                return await self._post(session, url, body, headers, delivery.transaction_id)
        except TimeoutError:
            return PushResult(False, PushError.TIMEOUT.value)
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError, ssl.SSLError):
            return PushResult(False, PushError.TLS_FAILED.value)
        except aiohttp.ClientConnectorError:
            return PushResult(False, PushError.CONNECT_FAILED.value)
        except aiohttp.InvalidURL:
            return PushResult(False, PushError.ENDPOINT_INVALID.value)
        except (aiohttp.ClientResponseError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            return PushResult(False, PushError.ANSWER_MALFORMED.value)
        except aiohttp.ClientError:
            return PushResult(False, PushError.CONNECT_FAILED.value)

    async def _post(
        self,
        session: aiohttp.ClientSession,
        url: URL,
        body: bytes,
        headers: dict[str, str],
        transaction_id: str,
    ) -> PushResult:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
            if not http_taken(response.status):
                response.close()  # the rest of the answer is not read: drop the connection
                return PushResult(False, http_error(response.status).value)
            if (response.content_length or 0) > MAX_ANSWER_BYTES:
                response.close()
                return PushResult(False, PushError.ANSWER_TOO_LARGE.value)
            chunks: list[bytes] = []
            received = 0
            while chunk := await response.content.read(MAX_ANSWER_BYTES + 1 - received):
                received += len(chunk)
                chunks.append(chunk)
                if received > MAX_ANSWER_BYTES:
                    response.close()
                    return PushResult(False, PushError.ANSWER_TOO_LARGE.value)
            content_type = response.headers.get("content-type", "")
            if not answer_type_ok(content_type, received):
                return PushResult(False, PushError.ANSWER_CONTENT_TYPE.value)
            if response.status == 409 or not answer_is_json(content_type):
                return push_answer.TAKEN  # a duplicate's answer carries no decision (§10.6)
            return push_answer.from_json(b"".join(chunks), transaction_id)

    async def close(self) -> None:
        await self._sessions.close()
