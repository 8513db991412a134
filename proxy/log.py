"""structlog setup: JSON lines (orjson) to stdout, or a console renderer on a terminal.

JSON lines are not written on the event loop: :class:`BackgroundWriter` queues them (bounded) and a
writer thread writes them out every 50 ms, so a slow stdout (a pipe the container runtime drains)
never stalls client requests. Lines that do not fit in the buffer are dropped and counted.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

import orjson
import structlog

FLUSH_EVERY_S = 0.05


class BackgroundWriter:
    """A file-like object for structlog: ``write`` queues bytes; a daemon thread writes them."""

    def __init__(self, raw: BinaryIO, max_bytes: int = 8 * 2**20) -> None:
        self._raw = raw
        self._max = max_bytes
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def write(self, data: bytes) -> int:
        with self._lock:
            if self._size + len(data) > self._max:
                self.dropped += 1
                return 0
            self._chunks.append(data)
            self._size += len(data)
            if self._size > 64 * 1024:
                self._wake.set()
        return len(data)

    def flush(self) -> None:
        """Nothing to do on the caller's thread: the writer thread flushes."""

    def _take(self) -> bytes:
        with self._lock:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
        return data

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_EVERY_S)
            self._wake.clear()
            data = self._take()
            if data:
                try:
                    self._raw.write(data)
                    self._raw.flush()
                except (OSError, ValueError):
                    pass  # stdout is gone (closed pipe): nothing sensible left to do with logs
            if self._closed and not self._chunks:
                return

    def close(self) -> None:
        """Write out what is queued (at shutdown and at interpreter exit)."""
        if not self._closed:
            self._closed = True
            self._wake.set()
            self._thread.join(timeout=2.0)


_writers: dict[int, BackgroundWriter] = {}
_access: BackgroundWriter | None = None  # set when access events may bypass structlog (JSON, info)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(
    level: str = "info", fmt: str | None = None, stream: TextIO | None = None, *, cache: bool = True
) -> None:
    """Configure structlog once per process. ``fmt=None`` picks console on a TTY, JSON otherwise.

    ``cache`` binds each logger to this configuration on first use (faster per event); tests that
    capture logs turn it off.
    """
    stream = stream or sys.stdout
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors = [
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        raw = getattr(stream, "buffer", stream)
        writer = _writers.get(id(raw))
        if writer is None:
            writer = _writers[id(raw)] = BackgroundWriter(raw)
        factory: Any = structlog.BytesLoggerFactory(writer)
    else:
        writer = None
        processors = [*shared, structlog.dev.ConsoleRenderer(colors=stream.isatty())]
        factory = structlog.PrintLoggerFactory(stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    global _access
    _access = writer if _LEVELS[level] <= logging.INFO else None
    # aiohttp and asyncio log through the stdlib; keep their warnings, in the same stream.
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), stream=sys.stderr, format="%(message)s")


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


_access_log = structlog.get_logger("proxy.access")


def access_event(**fields: Any) -> None:
    """The access-log event (``event: request``), the one log line a request may cost.

    With JSON logs it is rendered here with orjson, in the same shape as structlog's lines (about a
    tenth of the pipeline's cost); otherwise it goes through structlog like every other event.
    """
    if _access is None:
        _access_log.info("request", **fields)
        return
    fields["event"] = "request"
    fields["level"] = "info"
    fields["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    _access.write(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))


def flush_logs() -> None:
    """Write out every queued log line now (called at the end of a clean shutdown)."""
    for writer in _writers.values():
        data = writer._take()
        if data:
            try:
                writer._raw.write(data)
                writer._raw.flush()
            except (OSError, ValueError):
                pass
