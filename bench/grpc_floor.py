"""A gRPC server that moves artifact bytes and does nothing else: the ceiling of what the
artifacts benchmark's client and Python gRPC carry on this machine.

`python -m bench.grpc_floor SIZE` serves trackd.v1.ArtifactService on 127.0.0.1 and a
free port (printed on stdout): UploadArtifact reads every message and drops its bytes,
then answers a FileInfo with the count; DownloadArtifact answers a FileInfo and then SIZE
bytes in 1 MiB messages encoded once up front. No database, no disk, no hashing: what
trackd adds to a transfer is the difference between it and this.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from trackd.v1 import artifact_pb2, artifact_service_pb2_grpc
from trackd.v1 import artifact_service_pb2 as apb

CHUNK = 1024 * 1024


class Floor(artifact_service_pb2_grpc.ArtifactServiceServicer):
    def __init__(self, size: int) -> None:
        self.size = size
        self.block = apb.DownloadArtifactResponse(data=bytes(CHUNK)).SerializeToString()

    async def UploadArtifact(
        self, requests: AsyncIterator[apb.UploadArtifactRequest], context: Any
    ) -> AsyncIterator[apb.UploadArtifactResponse]:
        received = 0
        async for request in requests:
            received += len(request.data)
        yield apb.UploadArtifactResponse(artifact=artifact_pb2.FileInfo(file_size=received))

    async def DownloadArtifact(
        self, request: apb.DownloadArtifactRequest, context: Any
    ) -> AsyncIterator[Any]:
        yield apb.DownloadArtifactResponse(
            artifact=artifact_pb2.FileInfo(path=request.path, file_size=self.size)
        ).SerializeToString()
        for _ in range(self.size // CHUNK):
            yield self.block


def _raw(data: Any) -> bytes:
    return data if isinstance(data, bytes) else data.SerializeToString()  # type: ignore[no-any-return]


async def main(size: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)])
    floor = Floor(size)
    handlers = {
        "UploadArtifact": grpc.stream_stream_rpc_method_handler(
            floor.UploadArtifact,
            request_deserializer=apb.UploadArtifactRequest.FromString,
            response_serializer=_raw,
        ),
        "DownloadArtifact": grpc.unary_stream_rpc_method_handler(
            floor.DownloadArtifact,
            request_deserializer=apb.DownloadArtifactRequest.FromString,
            response_serializer=_raw,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("trackd.v1.ArtifactService", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
