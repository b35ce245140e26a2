"""The web page (``wbc app``): a FastAPI server, :func:`wbc.app.server.create_app`, and its one HTML page."""
