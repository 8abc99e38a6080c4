"""`ler node run`: the asyncio daemon that owns the store, the producer loop and the HTTP server.

One structured log line per event on stderr (key=value). SIGINT and SIGTERM stop it cleanly: the
server stops taking requests, the block in progress finishes its one atomic write, the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from ler.keys import KeyPair
from node.api import make_app
from node.config import NodeConfig
from node.service import NodeService

log = logging.getLogger("ler.node")


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def serve(config: NodeConfig, key: KeyPair, stop: asyncio.Event) -> None:
    svc = NodeService(config, key)
    try:
        reloaded = svc.reload_pending()
        app = make_app(svc)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
        await site.start()
        log.info("event=node_started chain=%s height=%d node=%s role=%s url=%s pending_reloaded=%d "
                 "producing=%s", svc.chain_id, svc.store.height, key.did, config.role, config.url, reloaded,
                 svc.is_producer)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(svc.produce_forever(), name="producer")
                await stop.wait()
                log.info("event=node_stopping height=%d", svc.store.height)
                # No cancel: a block being written finishes its one atomic batch; the loop then returns.
                svc.stop()
            # No block comes after this: clients still waiting on pending txs get their answer now.
            await svc.release_waiters()
        finally:
            await runner.cleanup()
    finally:
        svc.close()
        log.info("event=node_stopped")


def run_node(config: NodeConfig, passphrase: str | None = None) -> None:
    """Run until SIGINT or SIGTERM."""
    setup_logging()
    key = config.load_key(passphrase)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve(config, key, stop)

    asyncio.run(main())
