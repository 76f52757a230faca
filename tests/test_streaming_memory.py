"""A 1 GB upload and a 1 GB download pass through while the gateway's memory stays flat."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from tests.support.gateways import write_config
from tests.support.upstream_app import CHUNK, pattern_bytes

GIGABYTE = 1_000_000_000
BUDGET = 50 * 1024 * 1024


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def expected_digest(size: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern_bytes(size):
        digest.update(chunk)
    return digest.hexdigest()


async def test_gigabyte_each_way_in_bounded_memory(tmp_path, upstream, client, gateway_process):
    routes = [{"name": "all", "path_prefix": "/", "upstream": "app", "max_body": "2GB"}]
    config_path, url, admin_url = write_config(tmp_path, upstream.url, routes=routes)
    process = gateway_process(config_path)
    await asyncio.to_thread(process.wait_ready, admin_url)
    async with client.get(f"{url}/bytes/1000000") as response:  # warm up code paths and pools
        await response.read()
    baseline = peak_rss_bytes(process.process.pid)

    async def upload_body():
        for _ in range(GIGABYTE // len(CHUNK)):
            yield CHUNK
        yield CHUNK[: GIGABYTE % len(CHUNK)]

    async with client.post(f"{url}/upload", data=upload_body()) as response:
        received = await response.json()
    assert received["size"] == GIGABYTE
    assert received["sha256"] == expected_digest(GIGABYTE)

    digest, size = hashlib.sha256(), 0
    async with client.get(f"{url}/bytes/{GIGABYTE}?length=1") as response:
        assert response.status == 200
        async for chunk in response.content.iter_chunked(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    assert size == GIGABYTE
    assert digest.hexdigest() == expected_digest(GIGABYTE)

    growth = peak_rss_bytes(process.process.pid) - baseline
    print(f"gateway peak RSS growth: {growth / 2**20:.1f} MiB")
    assert growth < BUDGET, f"gateway peak RSS grew by {growth / 2**20:.1f} MiB"
