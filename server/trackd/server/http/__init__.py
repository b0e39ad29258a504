"""The HTTP adapter: MLflow's REST API (and, later, the web view) over the same domain as
the gRPC services, served by aiohttp on the gRPC server's event loop."""
