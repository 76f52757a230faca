"""Reading a running gateway's admin API the way an operator would."""

from __future__ import annotations

from tests.support.tokens import ADMIN


async def events(client, gateway, **filters) -> list[dict]:
    async with client.get(f"{gateway.admin_url}/admin/events", params=filters, headers=ADMIN) as response:
        assert response.status == 200
        return (await response.json())["events"]
