"""The node daemon: configuration, HTTP API, mempool, block production, CLI."""
