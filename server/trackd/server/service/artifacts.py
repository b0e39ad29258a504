"""The ArtifactService servicer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from trackd.server import convert
from trackd.server.domain.artifacts import Artifacts, Owner, Upload, check_range, owner_of
from trackd.server.domain.auth.policy import Gate
from trackd.server.errors import Aborted, InvalidArgument
from trackd.server.service import sizes
from trackd.server.service.rpc import Context
from trackd.v1 import artifact_service_pb2 as pb
from trackd.v1 import artifact_service_pb2_grpc

_UPLOAD = "trackd.v1.ArtifactService.UploadArtifact"


# DownloadArtifactResponse.data is field 2, length-delimited: its tag byte.
_DATA_TAG = bytes([(pb.DownloadArtifactResponse.DESCRIPTOR.fields_by_name["data"].number << 3) | 2])


def _data_message(chunk: bytes) -> bytes:
    """A DownloadArtifactResponse holding `chunk` in `data`, encoded: the tag, the length
    as a varint, the bytes. Built directly so that a chunk is copied once on its way to
    gRPC rather than into a message and again out of it (downloads are bound by copies)."""
    n = len(chunk)
    length = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            length.append(byte | 0x80)
        else:
            length.append(byte)
            break
    return b"".join((_DATA_TAG, length, chunk))


def _progress(upload_id: str, held: int) -> pb.UploadArtifactResponse:
    return pb.UploadArtifactResponse(
        progress=pb.UploadProgress(upload_id=upload_id, persisted_bytes=held)
    )


class ArtifactService(artifact_service_pb2_grpc.ArtifactServiceServicer):
    """trackd.v1.ArtifactService over the artifacts domain."""

    def __init__(self, artifacts: Artifacts) -> None:
        self.artifacts = artifacts
        # The permission policy of every call (service/rpc.py applies it; an upload's is
        # applied here, to its first message).
        self.gate = Gate(artifacts.db)

    async def _owner(self, request: object, prefix: str = "") -> Owner:
        return await self.artifacts.owner(*owner_of(request, prefix))

    async def UploadArtifact(
        self, requests: AsyncIterator[pb.UploadArtifactRequest], context: Context
    ) -> AsyncIterator[pb.UploadArtifactResponse]:
        messages = aiter(requests)
        first = await anext(messages, None)
        if first is None or first.WhichOneof("message") != "start":
            raise InvalidArgument.for_field("start", "the first message must be an UploadStart")
        start = first.start
        kind_and_id = owner_of(start, "start.")
        await self.gate.authorizer.check(_UPLOAD, start)
        owner = await self.artifacts.owner(*kind_and_id)
        upload = await self.artifacts.begin(owner, start)
        try:
            async for response in self._receive(upload, messages):
                yield response
        except asyncio.CancelledError:
            if not upload.taken_over:
                raise
            raise Aborted(
                f"upload {upload.upload_id} was resumed by another call; this one ends",
                metadata={"upload_id": upload.upload_id},
            ) from None
        finally:
            self.artifacts.release(upload)

    async def _receive(
        self, upload: Upload, messages: AsyncIterator[pb.UploadArtifactRequest]
    ) -> AsyncIterator[pb.UploadArtifactResponse]:
        """The answers to an upload's messages after its start."""
        yield _progress(upload.upload_id, upload.received)
        async for request in messages:
            kind = request.WhichOneof("message")
            if kind == "data":
                acked = await self.artifacts.write(upload, request.data)
                if acked is not None:
                    yield _progress(upload.upload_id, acked)
            elif kind == "finish":
                file = await self.artifacts.finish(upload, request.finish.sha256)
                yield pb.UploadArtifactResponse(artifact=convert.file_info(file))
                return
            else:
                raise InvalidArgument.for_field(
                    "start", "came again; a call uploads one file (one UploadStart)"
                )
        held = await self.artifacts.sync(upload)
        raise InvalidArgument.for_field(
            "finish",
            f"is missing: the stream ended after {held} bytes; the upload stays "
            f"resumable as upload_id {upload.upload_id}",
        )

    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: Context
    ) -> AsyncIterator[pb.DownloadArtifactResponse]:
        owner = await self._owner(request)
        check_range(request.offset, request.length)
        file = await self.artifacts.stat(owner, request.path)
        yield pb.DownloadArtifactResponse(artifact=convert.file_info(file))
        async for chunk in self.artifacts.read(file, request.offset, request.length):
            yield _data_message(chunk)  # type: ignore[misc]

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: Context
    ) -> pb.ListArtifactsResponse:
        owner = await self._owner(request)
        page, token = await self.artifacts.list(
            owner, request.path, request.recursive, request.max_results, request.page_token
        )
        response = pb.ListArtifactsResponse(
            root_uri=owner.artifact_uri,
            files=[convert.file_info(f) for f in page],
            next_page_token=token,
        )
        sizes.fit_page(response, "files", page, "ListArtifacts")
        return response

    async def GetArtifact(
        self, request: pb.GetArtifactRequest, context: Context
    ) -> pb.GetArtifactResponse:
        owner = await self._owner(request)
        file = await self.artifacts.stat(owner, request.path)
        return pb.GetArtifactResponse(artifact=convert.file_info(file))

    async def DeleteArtifact(
        self, request: pb.DeleteArtifactRequest, context: Context
    ) -> pb.DeleteArtifactResponse:
        owner = await self._owner(request)
        count = await self.artifacts.delete(owner, request.path)
        return pb.DeleteArtifactResponse(deleted_count=count)
