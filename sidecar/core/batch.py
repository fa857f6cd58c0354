"""What a batch job consumed, read from its results: the JSONL lines of its output file (or the
``outputs`` of a job read inline), each ``{"id", "custom_id", "response": {"status_code", "body"}, "error"}``.

``OutputTally`` is fed the output file chunk by chunk as it is relayed and keeps only the line being
read, so a file of gigabytes costs the sidecar its longest line, not its size. Every reader is total:
an odd line is counted as unreadable, never raised, because the file is already on its way out.
"""

from __future__ import annotations

import json
from dataclasses import replace

from sidecar.core import usage as usage_mod
from sidecar.core.usage import Usage

# BatchJob.endpoint (the spec's ApiEndpoint) -> how its lines' usage is read; others carry none we price.
ENDPOINT_KINDS: dict[str, str] = {
    "/v1/chat/completions": usage_mod.CHAT,
    "/v1/fim/completions": usage_mod.FIM,
    "/v1/embeddings": usage_mod.EMBEDDINGS,
    "/v1/ocr": usage_mod.OCR,
    "/v1/conversations": usage_mod.CONVERSATION,
    "/v1/audio/transcriptions": usage_mod.TRANSCRIPTION,
    "/v1/agents/completions": usage_mod.AGENTS,
}
# BatchJobStatus values after which a job's outputs no longer change.
FINISHED = frozenset({"SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"})
# A line longer than this (an OCR answer with its images inline can run to megabytes) is not parsed:
# it is counted as unreadable and skipped, so one line cannot hold a worker's memory.
MAX_LINE = 32 * 1024 * 1024


def kind_for(endpoint: object) -> str:
    return ENDPOINT_KINDS.get(endpoint, usage_mod.NONE) if isinstance(endpoint, str) else usage_mod.NONE


def line_usage(kind: str, line: object) -> Usage | None:
    """The usage one output line reports, or None for a failed request (an ``error``, a status other
    than 2xx) or an answer without usage: Mistral bills neither, so neither is charged."""
    if not isinstance(line, dict) or line.get("error") is not None:
        return None
    response = line.get("response")
    if not isinstance(response, dict):
        return None
    status, body = response.get("status_code"), response.get("body")
    if type(status) is not int or not 200 <= status < 300 or not isinstance(body, dict):
        return None
    if kind == usage_mod.OCR:
        if not isinstance(body.get("usage_info"), dict):
            return None
        # The request is not in the output; an answer with a document annotation was an annotated one.
        return replace(usage_mod.from_body(kind, body), annotated=body.get("document_annotation") is not None)
    if kind == usage_mod.NONE or not isinstance(body.get("usage"), dict):
        return None
    return usage_mod.from_body(kind, body)


def _plus(a: Usage, b: Usage) -> Usage:
    return replace(a, prompt_tokens=a.prompt_tokens + b.prompt_tokens,
                   completion_tokens=a.completion_tokens + b.completion_tokens,
                   total_tokens=a.total_tokens + b.total_tokens, pages=a.pages + b.pages,
                   audio_seconds=a.audio_seconds + b.audio_seconds, characters=a.characters + b.characters,
                   cached_tokens=a.cached_tokens + b.cached_tokens)


class OutputTally:
    """Usage of a batch job's output, summed per (model, annotated), read line by line as it arrives.

    ``model`` is the job's model, used for lines whose answer names none. ``lines`` counts the
    non-blank lines, ``charged`` those with usage, ``unreadable`` those that were not JSON objects.
    """

    __slots__ = ("kind", "model", "usages", "lines", "charged", "unreadable", "_partial", "_skipping")

    def __init__(self, endpoint: object, model: str | None = None):
        self.kind = kind_for(endpoint)
        self.model = model
        self.usages: dict[tuple[str | None, bool], Usage] = {}
        self.lines = self.charged = self.unreadable = 0
        self._partial = bytearray()
        self._skipping = False  # inside a line longer than MAX_LINE, until its newline

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            if self._skipping:
                self._skipping = False
            elif len(self._partial) + end - start > MAX_LINE:
                self._too_long()
                self._skipping = False
            elif self._partial:
                self._partial += chunk[start:end]
                self._line(bytes(self._partial))
                self._partial.clear()
            else:
                self._line(chunk[start:end])
            start = end + 1
        if start < len(chunk) and not self._skipping:
            if len(self._partial) + len(chunk) - start > MAX_LINE:
                self._too_long()
            else:
                self._partial += chunk[start:]

    def _too_long(self) -> None:
        """A line over MAX_LINE: counted as unreadable, its bytes dropped until its newline."""
        self._partial.clear()
        self._skipping = True
        self.lines += 1
        self.unreadable += 1

    def finish(self) -> None:
        """The file ended: its last line, when it has no newline of its own."""
        if self._partial and not self._skipping:
            self._line(bytes(self._partial))
        self._partial.clear()

    def add(self, line: object) -> None:
        """One decoded output (a job's inline ``outputs`` item, or a parsed line)."""
        self.lines += 1
        if not isinstance(line, dict):
            self.unreadable += 1
            return
        usage = line_usage(self.kind, line)
        if usage is None:
            return
        self.charged += 1
        key = (usage.model or self.model, usage.annotated)
        seen = self.usages.get(key)
        self.usages[key] = usage if seen is None else _plus(seen, usage)

    def _line(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            line = json.loads(raw)
        except (ValueError, RecursionError):
            self.lines += 1
            self.unreadable += 1
            return
        self.add(line)

    def total(self) -> Usage:
        """Every charged line's usage summed (the record's columns); its model when they share one."""
        total = Usage()
        for usage in self.usages.values():
            total = _plus(total, usage)
        models = {model for model, _annotated in self.usages}
        return replace(total, model=models.pop() if len(models) == 1 else self.model)
