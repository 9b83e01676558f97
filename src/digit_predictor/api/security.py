"""Optional shared-secret access: when API_KEY is set, every /v1 call must send it."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import HTTPException, Security
from fastapi.security import APIKeyHeader

API_KEY_HEADER = "X-API-Key"

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="The api's shared key (the API_KEY setting); required on every /v1 call.",
)


def require_api_key(expected: str) -> Callable[[str | None], Awaitable[None]]:
    """A dependency that refuses (401) a missing or wrong key, comparing in constant time."""
    expected_bytes = expected.encode()

    async def check(key: Annotated[str | None, Security(api_key_header)]) -> None:
        if not key:
            raise HTTPException(
                status_code=401,
                detail=f"missing API key: send it in the {API_KEY_HEADER} header",
                headers={"WWW-Authenticate": API_KEY_HEADER},
            )
        if not secrets.compare_digest(key.encode(), expected_bytes):
            raise HTTPException(
                status_code=401,
                detail=f"wrong API key in the {API_KEY_HEADER} header",
                headers={"WWW-Authenticate": API_KEY_HEADER},
            )

    return check
