"""The dashboard (`mqi serve`): read-mostly pages over the store, `/api/` JSON, `/metrics`.

A shell at the top layer: it calls :mod:`mqi.api` and nothing imports it; `mqi serve`
hands uvicorn the import string of :func:`mqi.web.app.app_from_environment`.
"""

from __future__ import annotations

from mqi.config import Config


def serve(config: Config, bind: str | None = None) -> None:
    """Run the dashboard under uvicorn until interrupted; a non-loopback bind without a token
    (or trusted proxy header) is refused before anything listens."""
    import uvicorn

    from mqi.web.app import create_app

    host, port = config.web.check_bind(bind or config.web.bind)
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )


__all__ = ["serve"]
