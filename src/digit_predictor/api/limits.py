"""Upload limits, enforced before any parsing.

- A declared Content-Length over the limit is refused with 413 at once, before reading the body.
- A body without Content-Length (chunked) is counted as it arrives and cut off at the limit (413).
- The whole body must arrive within a deadline, or the request ends with 408, so a client that
  trickles its body cannot hold a connection and a worker forever.

Both refusals close the connection: the rest of the body is never read.
"""

from __future__ import annotations

import asyncio
import json

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digit_predictor.api.logs import request_id_var

# Room for the multipart boundaries, part headers and the `source` field around the image.
MULTIPART_OVERHEAD_BYTES = 16 * 1024
CLOSE = {"Connection": "close"}


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"is {declared} bytes" if declared is not None else "goes on past"
        image_limit = limit - MULTIPART_OVERHEAD_BYTES
        super().__init__(
            status_code=413,
            detail=(
                f"too many bytes: the request body {size} the limit of {limit} bytes "
                f"(an image of at most {image_limit} bytes plus the form around it); "
                "send a smaller image"
            ),
            headers=CLOSE,
        )


class BodyTimeout(HTTPException):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            status_code=408,
            detail=(
                f"the request body did not arrive within {timeout_s:g} s; "
                "send the whole request at once"
            ),
            headers=CLOSE,
        )


class UploadLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, read_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send_error(send, BodyTooLarge(self.max_body_bytes, int(declared)))
            return

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        received = 0
        body_complete = False

        async def limited_receive() -> Message:
            nonlocal received, body_complete
            if body_complete:  # later calls only wait for a disconnect: no deadline there
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.read_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
                body_complete = not message.get("more_body", False)
            return message

        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as exc:
            # Normally the app's exception handler answers; this covers a body read elsewhere.
            if response_started:
                raise
            await _send_error(send, exc)


async def _send_error(send: Send, exc: HTTPException) -> None:
    request_id = request_id_var.get()
    payload = {"detail": exc.detail, "request_id": str(request_id) if request_id else None}
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
