"""The APIs, split by what they serve: ``http/`` (the server, v1, v2), ``thrift/``,
``console/``, ``formats/`` (wire formats they share) and ``security`` (who may
call); each reaches the engine only through :mod:`forsun_box.api.service`."""
