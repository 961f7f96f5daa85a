"""zerolens: a Flask web tier and a batching model server, joined by the ZeroMQ protocol in protocol.py."""
