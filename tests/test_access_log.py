"""The access log as production writes it: JSON lines on stderr, batched off the request path."""

from __future__ import annotations

import asyncio
import json
import signal

from tests.support.gateways import write_config


async def test_each_request_gets_one_json_access_line_also_the_last_before_exit(tmp_path, upstream, client,
                                                                                  gateway_process):
    path, url, admin_url = write_config(tmp_path, upstream.url, access_log=True)
    process = gateway_process(path)
    await asyncio.to_thread(process.wait_ready, admin_url)
    ids = [f"access-{n}" for n in range(3)]
    for request_id in ids:
        async with client.get(f"{url}/echo?n=1", headers={"X-Request-Id": request_id}) as response:
            assert response.status == 200
    process.process.send_signal(signal.SIGTERM)  # lines not yet written go out on the way down
    assert await asyncio.to_thread(process.process.wait, 10) == 0

    entries = [json.loads(line) for line in process.output().splitlines() if line.startswith("{")]
    access = [entry for entry in entries if entry.get("msg") == "access"]
    assert [entry["request_id"] for entry in access] == ids
    first = access[0]
    # The same line JsonFormatter writes for any other record, fields in the same order.
    assert list(first) == ["ts", "level", "logger", "msg", "method", "path", "status", "bytes_out", "duration_ms",
                           "client_ip", "request_id"]
    assert (first["level"], first["logger"], first["method"], first["path"], first["status"]) == (
        "info", "fairgate.access", "GET", "/echo", 200)
    assert first["client_ip"] == "127.0.0.1"
    assert first["bytes_out"] > 0
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2026-01-01T00:00:00.000Z")
