"""HTTP: the server and its router, forsun's v1 API, the v2 API and its batch and routes."""
