"""Wire formats the APIs read and write: crontab syntax, v1 bodies, the v2 schema, OpenAPI."""
