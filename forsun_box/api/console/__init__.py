"""The web console: server-rendered pages on the HTTP server."""
