"""AsyncClient's artifact calls, under MlflowClient's names: files of runs and logged
models uploaded from disk or memory, listed, downloaded, inspected and deleted.

The calls of one file (`upload_artifact`, `download_artifact`, `get_artifact`,
`delete_artifact`, `iter_artifacts`) serve a run's files, or a logged model's with
`model_id=` instead of a run id. The MLflow-named calls (`log_artifact`,
`list_artifacts`, `download_artifacts`, ...) are built on them.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from typing import IO, Any

from trackd.client import transfer
from trackd.client.calls import Calls, rpc
from trackd.client.entities import FileInfo
from trackd.client.errors import NotFoundError
from trackd.client.transfer import Owner, Progress, ProgressCallback, artifact_path
from trackd.v1 import artifact_service_pb2

# A listing's page size when walking every page.
LIST_PAGE_SIZE = 1000


class ArtifactCalls(Calls):
    """Artifacts of runs and logged models: upload, download, list, stat, delete."""

    # -- one file, one call ------------------------------------------------------------------

    @rpc
    async def upload_artifact(
        self,
        run_id: str | None,
        local_path: str | os.PathLike[str],
        artifact_file: str | None = None,
        *,
        model_id: str | None = None,
        progress: ProgressCallback | None = None,
        progress_bar: bool = False,
    ) -> FileInfo:
        """Uploads one local file as the artifact `artifact_file` (default: the file's
        name at the root), streamed from disk in 1 MiB chunks with its SHA-256, and resumed
        from the last byte the server holds if the connection drops (up to 5 attempts in a
        row without progress). The file becomes visible whole, or not at all.

        Args:
            run_id: the run owning the file; None for a logged model's (`model_id`).
            local_path: the file to send.
            artifact_file: its path under the owner's artifact root ('/'-separated).
            model_id: the logged model owning the file, instead of a run.
            progress: called with (bytes sent, total bytes) as the upload advances.
            progress_bar: show a tqdm progress bar.

        Returns:
            The stored file.

        Raises:
            InvalidArgumentError: a bad path (the message names the rule).
            NotFoundError: no such run or model. FailedPreconditionError: it is deleted, or
            the path is a directory. ResourceExhaustedError: the file is larger than the
            server's maximum artifact size. OSError: the file cannot be read.
        """
        who = transfer.owner(run_id, model_id)
        name = artifact_file or os.path.basename(os.fspath(local_path))
        source, size = await asyncio.to_thread(_open_for_reading, local_path)
        with source, Progress(size, progress, progress_bar, name) as report:
            return await self._send(who, name, source, size, report)

    async def _send(
        self, who: Owner, path: str, source: IO[bytes], size: int, report: Progress
    ) -> FileInfo:
        report.begin_file()
        stored = await transfer.upload(self.artifacts, who, path, source, size, report)
        return FileInfo.from_proto(stored)

    @rpc
    async def download_artifact(
        self,
        run_id: str | None,
        path: str,
        dst: str | os.PathLike[str],
        offset: int = 0,
        length: int = 0,
        *,
        model_id: str | None = None,
        progress: ProgressCallback | None = None,
        progress_bar: bool = False,
    ) -> FileInfo:
        """Downloads one artifact file, or a byte range of it, into the local file `dst`
        (replaced; its directory is created). The bytes go to a temporary file renamed to
        `dst` when complete; a whole file is first checked against its size and SHA-256. A
        dropped stream is resumed where it stopped.

        Args:
            run_id: the run owning the file; None for a logged model's (`model_id`).
            path: the artifact's path.
            dst: the local file to write.
            offset: the first byte to fetch.
            length: the number of bytes from `offset`; 0 for all the rest.
            model_id: the logged model owning the file, instead of a run.
            progress: called with (bytes received, total bytes).
            progress_bar: show a tqdm progress bar.

        Returns:
            The file's FileInfo (of the whole file, even for a range).

        Raises:
            NotFoundError: no such owner or file (a directory is not a file).
            TrackdError: (DATA_LOSS) the bytes received do not match the file's hash.
        """
        who = transfer.owner(run_id, model_id)
        with Progress(0, progress, progress_bar, path) as report:
            info = await transfer.download(
                self.artifacts, who, path, os.fspath(dst), offset, length, report
            )
        return FileInfo.from_proto(info)

    @rpc
    async def get_artifact(
        self, run_id: str | None, path: str, *, model_id: str | None = None
    ) -> FileInfo:
        """The FileInfo of one artifact file: size, SHA-256, media type, modification time
        and, for a CSV or Parquet table, its row count.

        Raises:
            NotFoundError: no such owner or file (a directory is not a file).
        """
        req = transfer.with_owner(
            artifact_service_pb2.GetArtifactRequest(path=path),
            transfer.owner(run_id, model_id),
        )
        resp = await self.artifacts.GetArtifact(req, timeout=self.timeout)
        return FileInfo.from_proto(resp.artifact)

    @rpc
    async def delete_artifact(
        self, run_id: str | None, path: str, *, model_id: str | None = None
    ) -> int:
        """Deletes one artifact file, or every file under a directory; returns how many.

        Raises:
            NotFoundError: no such owner, or nothing at `path`. FailedPreconditionError:
            the owner is deleted.
        """
        req = transfer.with_owner(
            artifact_service_pb2.DeleteArtifactRequest(path=path),
            transfer.owner(run_id, model_id),
        )
        resp = await self.artifacts.DeleteArtifact(req, timeout=self.timeout)
        return resp.deleted_count

    @rpc
    async def _artifact_page(
        self, who: Owner, path: str, recursive: bool, page_size: int, token: str
    ) -> tuple[str, list[FileInfo], str]:
        req = transfer.with_owner(
            artifact_service_pb2.ListArtifactsRequest(
                path=path, recursive=recursive, max_results=page_size, page_token=token
            ),
            who,
        )
        resp = await self.artifacts.ListArtifacts(req, timeout=self.timeout)
        return resp.root_uri, [FileInfo.from_proto(f) for f in resp.files], resp.next_page_token

    async def iter_artifacts(
        self,
        run_id: str | None,
        path: str | None = None,
        *,
        recursive: bool = False,
        model_id: str | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> AsyncIterator[FileInfo]:
        """The files and directories directly under `path` (None: the root), or with
        `recursive` every file under it, in path order, fetching page after page.

        Raises:
            NotFoundError: no such owner.
        """
        who = transfer.owner(run_id, model_id)
        token = ""
        while True:
            _, files, token = await self._artifact_page(
                who, _directory(path), recursive, page_size, token
            )
            for f in files:
                yield f
            if not token:
                return

    async def list_artifacts(
        self,
        run_id: str,
        path: str | None = None,
        *,
        recursive: bool = False,
    ) -> list[FileInfo]:
        """The files and directories directly under `path` of a run (None: the root), in
        path order (every page); with `recursive`, every file under it instead.

        Raises:
            NotFoundError: no such run.
        """
        return [f async for f in self.iter_artifacts(run_id, path, recursive=recursive)]

    async def list_logged_model_artifacts(
        self, model_id: str, path: str | None = None, *, recursive: bool = False
    ) -> list[FileInfo]:
        """list_artifacts for a logged model's files.

        Raises:
            NotFoundError: no such model.
        """
        return [
            f async for f in self.iter_artifacts(None, path, recursive=recursive, model_id=model_id)
        ]

    # -- MLflow's calls ----------------------------------------------------------------------

    async def log_artifact(
        self,
        run_id: str,
        local_path: str | os.PathLike[str],
        artifact_path: str | None = None,
        *,
        progress: ProgressCallback | None = None,
        progress_bar: bool = False,
    ) -> FileInfo:
        """Uploads a local file into the run's artifact directory `artifact_path` (None: the
        root), under its own name; see upload_artifact.

        Returns:
            The stored file.
        """
        return await self._log_file(
            (run_id, None), local_path, artifact_path, progress, progress_bar
        )

    async def log_model_artifact(
        self,
        model_id: str,
        local_path: str | os.PathLike[str],
        artifact_path: str | None = None,
        *,
        progress: ProgressCallback | None = None,
        progress_bar: bool = False,
    ) -> FileInfo:
        """log_artifact for a logged model.

        Returns:
            The stored file.
        """
        return await self._log_file(
            (None, model_id), local_path, artifact_path, progress, progress_bar
        )

    async def _log_file(
        self,
        ids: tuple[str | None, str | None],
        local_path: str | os.PathLike[str],
        directory: str | None,
        progress: ProgressCallback | None,
        progress_bar: bool,
    ) -> FileInfo:
        name = artifact_path(directory, os.path.basename(os.fspath(local_path)))
        return await self.upload_artifact(
            ids[0],
            local_path,
            name,
            model_id=ids[1],
            progress=progress,
            progress_bar=progress_bar,
        )

    async def log_artifacts(
        self,
        run_id: str,
        local_dir: str | os.PathLike[str],
        artifact_path: str | None = None,
        *,
        progress: ProgressCallback | None = None,
        progress_bar: bool = False,
    ) -> list[FileInfo]:
        """Uploads every file under a local directory (recursively) into the run's artifact
        directory `artifact_path` (None: the root), keeping their relative paths; one file
        after another, each as upload_artifact.

        Returns:
            The stored files, in the order sent.
        """
        return await self._log_dir(
            transfer.owner(run_id, None), local_dir, artifact_path, progress, progress_bar
        )

    async def log_model_artifacts(
        self,
        model_id: str,
        local_dir: str | os.PathLike[str],
        artifact_path: str | None = None,
        *,
        progress: ProgressCallback | None = None,
        progress_bar: bool = False,
    ) -> list[FileInfo]:
        """log_artifacts for a logged model.

        Returns:
            The stored files, in the order sent.
        """
        return await self._log_dir(
            transfer.owner(None, model_id), local_dir, artifact_path, progress, progress_bar
        )

    @rpc
    async def _log_dir(
        self,
        who: Owner,
        local_dir: str | os.PathLike[str],
        directory: str | None,
        progress: ProgressCallback | None,
        progress_bar: bool,
    ) -> list[FileInfo]:
        files = await asyncio.to_thread(_walk, os.fspath(local_dir))
        stored = []
        total = sum(size for _, _, size in files)
        with Progress(total, progress, progress_bar, os.fspath(local_dir)) as report:
            for local, relative, _ in files:
                source, size = await asyncio.to_thread(_open_for_reading, local)
                with source:
                    stored.append(
                        await self._send(
                            who, artifact_path(directory, relative), source, size, report
                        )
                    )
        return stored

    async def log_text(self, run_id: str, text: str, artifact_file: str) -> FileInfo:
        """Stores `text` (UTF-8) as the run's artifact `artifact_file`.

        Returns:
            The stored file.
        """
        return await self._log_bytes(run_id, text.encode("utf-8"), artifact_file)

    async def log_dict(
        self, run_id: str, dictionary: Mapping[str, Any] | list[Any], artifact_file: str
    ) -> FileInfo:
        """Stores `dictionary` as the run's artifact `artifact_file`: YAML when the name
        ends .yaml or .yml and PyYAML is installed, else JSON indented by 2 (JSON is YAML
        too).

        Returns:
            The stored file.

        Raises:
            TypeError: a value JSON (or YAML) cannot represent.
        """
        return await self._log_bytes(run_id, _dict_bytes(dictionary, artifact_file), artifact_file)

    async def log_figure(
        self,
        run_id: str,
        figure: Any,
        artifact_file: str,
        *,
        save_kwargs: Mapping[str, Any] | None = None,
    ) -> FileInfo:
        """Stores a matplotlib or plotly figure as the run's artifact `artifact_file`, in the
        format its extension names (.png, .svg, .pdf ... for matplotlib; .html, or an image
        format through kaleido, for plotly).

        Args:
            save_kwargs: extra arguments of matplotlib's `savefig` (or plotly's
                `write_html` / `write_image`).

        Returns:
            The stored file.

        Raises:
            TypeError: the figure is neither matplotlib's nor plotly's.
            ImportError: neither matplotlib nor plotly is installed.
        """
        data = await asyncio.to_thread(_figure_bytes, figure, artifact_file, save_kwargs or {})
        return await self._log_bytes(run_id, data, artifact_file)

    async def _log_bytes(self, run_id: str, data: bytes, artifact_file: str) -> FileInfo:
        with Progress(len(data)) as report:
            return await self._upload_memory(
                transfer.owner(run_id, None), artifact_file, data, report
            )

    @rpc
    async def _upload_memory(
        self, who: Owner, path: str, data: bytes, report: Progress
    ) -> FileInfo:
        return await self._send(who, path, io.BytesIO(data), len(data), report)

    async def download_artifacts(
        self,
        run_id: str,
        path: str,
        dst_path: str | os.PathLike[str] | None = None,
        *,
        progress: ProgressCallback | None = None,
        progress_bar: bool = False,
    ) -> str:
        """Downloads an artifact file, or a whole artifact directory ("" for everything),
        into `dst_path` (created if missing; None: a new temporary directory), keeping the
        artifact paths below it. Each file is written to a temporary name and renamed once
        its size and SHA-256 match the server's; a path that would land outside
        `dst_path` is refused.

        Returns:
            The local path of the file or directory downloaded.

        Raises:
            NotFoundError: no such run, or nothing at `path`.
            TrackdError: (DATA_LOSS) a file's bytes did not match its hash, or the server
            named a path outside `dst_path`.
        """
        return await self._download_tree(
            transfer.owner(run_id, None), path, dst_path, progress, progress_bar
        )

    async def download_model_artifacts(
        self,
        model_id: str,
        path: str,
        dst_path: str | os.PathLike[str] | None = None,
        *,
        progress: ProgressCallback | None = None,
        progress_bar: bool = False,
    ) -> str:
        """download_artifacts for a logged model's files.

        Returns:
            The local path of the file or directory downloaded.
        """
        return await self._download_tree(
            transfer.owner(None, model_id), path, dst_path, progress, progress_bar
        )

    @rpc
    async def _download_tree(
        self,
        who: Owner,
        path: str,
        dst_path: str | os.PathLike[str] | None,
        progress: ProgressCallback | None,
        progress_bar: bool,
    ) -> str:
        prefix = _directory(path)
        root = os.fspath(dst_path) if dst_path is not None else tempfile.mkdtemp()
        await asyncio.to_thread(os.makedirs, root, exist_ok=True)
        ids = (who[1], None) if who[0] == "run_id" else (None, who[1])
        files: list[FileInfo]
        missing: NotFoundError | None = None
        if prefix:
            try:
                files = [await self.get_artifact(ids[0], prefix, model_id=ids[1])]
            except NotFoundError as err:
                files, missing = [], err
        else:
            files = []
        if not files:
            files = [
                f
                async for f in self.iter_artifacts(
                    ids[0], prefix or None, recursive=True, model_id=ids[1]
                )
            ]
            if missing is not None and not files:
                raise missing
            for f in files:
                if prefix and not f.path.startswith(prefix + "/"):
                    raise transfer._unsafe(f.path)
        targets = [(f, transfer.local_target(root, f.path)) for f in files]
        total = sum(f.file_size or 0 for f in files)
        with Progress(total, progress, progress_bar, prefix or root) as report:
            for f, target in targets:
                report.begin_file()
                await transfer.download(
                    self.artifacts, who, f.path, target, 0, 0, report, size_known=True
                )
        if not prefix:
            return await asyncio.to_thread(os.path.realpath, root)
        local = transfer.local_target(root, prefix)
        if missing is not None:
            # A directory: present even when it held nothing but directories.
            await asyncio.to_thread(os.makedirs, local, exist_ok=True)
        return local


def _directory(path: str | None) -> str:
    """An artifact directory argument as the server takes it ("" for the root)."""
    path = (path or "").strip("/")
    return "" if path == "." else path


def _open_for_reading(local_path: str | os.PathLike[str]) -> tuple[IO[bytes], int]:
    f = open(local_path, "rb")
    try:
        return f, os.fstat(f.fileno()).st_size
    except BaseException:
        f.close()
        raise


def _walk(local_dir: str) -> list[tuple[str, str, int]]:
    """(local path, '/'-separated relative path, size) of every file under a directory, in
    path order.

    Raises:
        NotADirectoryError: `local_dir` is not a directory.
    """
    if not os.path.isdir(local_dir):
        raise NotADirectoryError(f"{local_dir!r} is not a directory")
    found = []
    for top, _, names in os.walk(local_dir):
        for name in names:
            local = os.path.join(top, name)
            relative = os.path.relpath(local, local_dir).replace(os.sep, "/")
            found.append((local, relative, os.path.getsize(local)))
    return sorted(found, key=lambda f: f[1])


def _dict_bytes(dictionary: Mapping[str, Any] | list[Any], artifact_file: str) -> bytes:
    if artifact_file.endswith((".yaml", ".yml")):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            pass
        else:
            text: str = yaml.safe_dump(
                dictionary if isinstance(dictionary, list) else dict(dictionary),
                default_flow_style=False,
                allow_unicode=True,
            )
            return text.encode("utf-8")
    return json.dumps(dictionary, indent=2).encode("utf-8")


def _figure_bytes(figure: Any, artifact_file: str, save_kwargs: Mapping[str, Any]) -> bytes:
    """The file of a matplotlib or plotly figure, in the format of `artifact_file`'s
    extension."""
    module = type(figure).__module__
    ext = os.path.splitext(artifact_file)[1].lstrip(".").lower()
    buffer = io.BytesIO()
    if module.startswith("matplotlib"):
        kwargs = {"format": ext or "png", **save_kwargs}
        figure.savefig(buffer, **kwargs)
        return buffer.getvalue()
    if module.startswith("plotly"):
        if ext in {"html", "htm"}:
            html: str = figure.to_html(**save_kwargs)
            return html.encode("utf-8")
        image: bytes = figure.to_image(format=ext or "png", **save_kwargs)
        return image
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(
            "log_figure stores matplotlib or plotly figures, and neither is installed "
            "(pip install matplotlib)"
        ) from None
    raise TypeError(f"log_figure takes a matplotlib or plotly figure, not {type(figure).__name__}")


__all__ = ["LIST_PAGE_SIZE", "ArtifactCalls"]
