"""forsun's Thrift interface: the server on the service's event loop."""
