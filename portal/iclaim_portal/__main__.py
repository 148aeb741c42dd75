"""`iclaim-portal` / `python -m iclaim_portal`: serve one participant's portal."""

from __future__ import annotations

import uvicorn

from iclaim_portal.app import build_app
from iclaim_portal.config import Config


def main() -> None:
    config = Config.from_env()
    uvicorn.run(
        build_app(config),
        host=config.host,
        port=config.port,
        log_level="info",
        # the page never needs proxy headers; a gateway in front sets the origin in config
        proxy_headers=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
