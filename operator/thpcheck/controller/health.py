"""The operator's health endpoints on ``THPCHECK_HEALTH_PORT``, served from kopf's event loop.

- ``/healthz`` (liveness): 200 while the loop answers.
- ``/readyz`` (readiness): 503 until the nodes are listed and kopf has listed every watched
  kind and filled every index, then 200 with the indexed counts. kopf calls no event handler
  before that (its start-up barrier), so the first handled watch event marks it
  (``controller.handlers.kopf_indexed``); in a cluster holding nothing kopf handles, no event
  comes, and the API saying so marks it (``indexed_when_nothing_to_handle``).

A replica waiting for the Lease (leader election) answers from ``leader.py``: live, and ready
only while another replica holds the Lease (a rolling update of the Deployment needs the new
pod Ready before the old one, the leader, is stopped); about to lead, it is not ready until it
has indexed the cluster here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import kopf
from aiohttp import web

from thpcheck.controller.context import OperatorContext, context_of

APP_KEY = web.AppKey("thpcheck-context", OperatorContext)


def readiness(indexed: Mapping[str, int] | None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of ``/readyz`` for what the first handler saw (None: none yet)."""
    if indexed is None:
        return 503, {"ready": False,
                     "waiting": "kopf's initial listing and indexing of every watched kind"}
    return 200, {"ready": True, "indexed": dict(indexed)}


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    status, body = readiness(request.app[APP_KEY].indexed)
    return web.Response(status=status, text=json.dumps(body) + "\n",
                        content_type="application/json")


async def start(memo: kopf.Memo, **_: Any) -> None:
    """kopf start-up handler: serve both endpoints until the clean-up handler stops them."""
    ctx = context_of(memo)
    port = ctx.settings.health_port
    if not port:
        return
    app = web.Application()
    app[APP_KEY] = ctx
    app.add_routes([web.get("/healthz", _healthz), web.get("/readyz", _readyz)])
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port, reuse_address=True).start()
    ctx.health_server = runner


async def stop(memo: kopf.Memo, **_: Any) -> None:
    runner = context_of(memo).health_server
    if runner is not None:
        await runner.cleanup()
