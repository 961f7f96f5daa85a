"""The model server: inference runtimes, batching, the ZeroMQ frontend and its workers."""
