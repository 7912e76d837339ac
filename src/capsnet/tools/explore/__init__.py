"""The interactive capsule explorer (``capsnet explore``): a FastAPI app and its page."""

from capsnet.tools.explore.app import create_app, load_explorer
from capsnet.tools.explore.server import ServerLimits, listen, make_server, serve, url

__all__ = ["ServerLimits", "create_app", "listen", "load_explorer", "make_server", "serve", "url"]
