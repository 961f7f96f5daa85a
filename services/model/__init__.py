"""The model server: model conversion (export), inference runtimes, batching."""
