"""The interactive capsule explorer (``capsnet explore``): a FastAPI app and its page."""

from capsnet.explore.app import create_app, listen, load_explorer, serve, url

__all__ = ["create_app", "listen", "load_explorer", "serve", "url"]
