"""gRPC driving adapter (PixService, health, reflection). Generated code lives in ``_generated``.

Regenerate it from the project root with::

    python -m grpc_tools.protoc \\
      -Iexamples/codepix/adapters/grpc_api/_generated=examples/codepix/proto \\
      --python_out=. --pyi_out=. --grpc_python_out=. \\
      examples/codepix/proto/codepix.proto
"""

from .server import SERVICE_NAME, PixServicer, build_server, serve, status_for

__all__ = ["SERVICE_NAME", "PixServicer", "build_server", "serve", "status_for"]
