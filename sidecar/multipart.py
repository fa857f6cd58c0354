"""One reading of multipart bodies, over werkzeug's sans-io decoder: which parts a body has and the
small text fields among them. Body reading (validation, the stream flag, the model) and contract
recording (the form a contract matches on) both use it.
"""

from __future__ import annotations

from collections.abc import Callable

from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData


class PartScan:
    """Fed chunk by chunk (``feed``, then ``feed(None)`` at the end); text fields are kept up to
    ``field_limit`` bytes; ``file_value`` (if given) also puts each file part in ``fields``."""

    def __init__(self, boundary: str, field_limit: int, file_value: Callable[[File], str] | None = None):
        self.decoder = MultipartDecoder(boundary.encode("latin-1"), max_form_memory_size=None)
        self.field_limit = field_limit
        self.file_value = file_value
        self.names: set[str] = set()
        self.fields: dict[str, str] = {}
        self._current: str | None = None
        self._value = bytearray()

    def feed(self, chunk: bytes | None) -> None:
        """Raises ``ValueError`` for a malformed body."""
        self.decoder.receive_data(chunk)
        while (event := self.decoder.next_event()) is not None and not isinstance(event, NeedData):
            if isinstance(event, (Field, File)):
                self.names.add(event.name)
                self._current = event.name if isinstance(event, Field) else None
                self._value.clear()
                if isinstance(event, File) and self.file_value is not None:
                    self.fields[event.name] = self.file_value(event)
            elif isinstance(event, Data) and self._current is not None:
                self._value += event.data[: self.field_limit - len(self._value)]
                if not event.more_data:
                    self.fields[self._current] = self._value.decode("utf-8", "replace")
                    self._current = None
            elif isinstance(event, Epilogue):
                return
