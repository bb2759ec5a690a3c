"""What people read about a submission's steps: one table of words for every page, live or rendered.

The api's JSON view, the server-rendered pages and the router's live events
all take their words from here, so a label never changes on reload ("done"
stays "done"). Students read only the fixed sentences below, chosen by step,
state and a few result fields: never a worker's error text, a setting's name
or a mail server's reply. Staff read the same label with the worker's detail
(``staff_note``).

A submission whose scan was skipped (no scanner configured) is "not
virus-scanned", in amber, everywhere: never a plain "complete".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Step states (core.pipeline.StepState) plus "waiting" (an external provider has the work).
STATE_TEXT: dict[str, str] = {
    "pending": "not started",
    "queued": "queued",
    "running": "running",
    "waiting": "waiting",
    "retrying": "retrying",
    "succeeded": "done",
    "failed": "failed",
    "skipped": "skipped",
}
NOT_SCANNED = "not virus-scanned"
# How a state looks: ok (green), warn (amber), bad (red), busy (blue), idle (grey).
TONES: dict[str, str] = {
    "pending": "idle",
    "queued": "busy",
    "running": "busy",
    "waiting": "busy",
    "retrying": "warn",
    "succeeded": "ok",
    "failed": "bad",
    "skipped": "idle",
}
QUARANTINED = "file quarantined"  # the reason core.steps gives steps skipped after a flagged scan
EARLIER_FAILED = "an earlier step failed"
NO_TEXT = "no text to compare"  # core.similarity.provider.NO_TEXT

# Fixed sentences a student reads, by (step, state); "*" is any step.
_STUDENT: dict[tuple[str, str], str] = {
    ("scan", "succeeded"): "no virus found",
    ("scan", "skipped"): "This file was not checked for viruses: no virus scanner runs on this server.",
    ("scan", "retrying"): "the virus scanner is not answering yet; trying again",
    ("scan", "failed"): "the virus scan could not be finished; staff can see why",
    ("store", "retrying"): "storing the file did not work yet; trying again",
    ("store", "failed"): "the file could not be stored; staff can see why",
    ("similarity", "skipped"): "not checked for similarity",
    ("similarity", "waiting"): "waiting for the similarity service",
    ("similarity", "retrying"): "the similarity service is not answering yet; trying again",
    ("similarity", "failed"): "the similarity check could not be done; staff can see why",
    ("admin", "succeeded"): "recorded by the central admin system",
    ("admin", "skipped"): "not needed: this server is not connected to a central admin system",
    ("admin", "retrying"): "the central admin system did not accept the submission yet; trying again",
    ("admin", "failed"): (
        "the central admin system did not accept the submission; your submission itself is received and kept,"
        " and staff can see why"
    ),
    ("receipt", "retrying"): "the receipt email could not be sent yet; trying again",
    ("receipt", "failed"): (
        "the receipt email could not be sent; your submission is received and kept, and this page is your receipt"
    ),
    ("thumbnail", "retrying"): "the preview is not ready yet; trying again",
    ("thumbnail", "failed"): "no preview could be made of this file; the file itself is kept",
    ("*", "retrying"): "a temporary problem; trying again",
    ("*", "failed"): "this step could not be done; staff can see why",
}


def state_text(step: str, state: str) -> str:
    if step == "scan" and state == "skipped":
        return NOT_SCANNED
    return STATE_TEXT.get(state, state)


def tone(step: str, state: str) -> str:
    if step == "scan" and state == "skipped":
        return "warn"
    return TONES.get(state, "idle")


def score_text(score: Any) -> str | None:
    """A similarity score as a page shows it: 0 → "0%", 12.5 → "12.5%", 33.333 → "33.3%"."""
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        return None
    return f"similarity {round(float(score), 1):g}%"


def student_note(step: str, state: str, result: Mapping[str, Any] | None, reason: str | None = None) -> str | None:
    """The sentence a student reads next to a step; ``reason`` is the step's own (never shown to them)."""
    result = result or {}
    if state == "skipped" and reason in (QUARANTINED, EARLIER_FAILED):
        return f"not done: {'the file is quarantined' if reason == QUARANTINED else reason}"
    if step == "scan" and state == "succeeded" and result.get("verdict") == "infected":
        return "flagged by the virus scanner: the file is quarantined and was not stored or sent anywhere"
    if step == "similarity" and state == "succeeded":
        return score_text(result.get("score"))
    if step == "similarity" and state == "skipped" and str(result.get("reason", "")).startswith(NO_TEXT):
        return "not checked for similarity: the file has no text to compare"
    if step == "receipt" and state == "succeeded":
        if result.get("delivery") == "outbox":
            return "written to this server's outbox (no mail server is set up here)"
        return "emailed to you"
    if step == "thumbnail" and state == "succeeded" and result.get("note"):
        return "no preview of this kind of file: an icon stands in"
    return _STUDENT.get((step, state)) or _STUDENT.get(("*", state))


def staff_note(step: str, state: str, result: Mapping[str, Any] | None, error: str | None = None) -> str | None:
    """What staff read: the student's sentence with the worker's own detail."""
    result = result or {}
    if step == "similarity" and state == "succeeded":
        return score_text(result.get("score"))
    detail = error or result.get("reason") or result.get("note")
    plain = student_note(step, state, result, error)
    if step == "scan" and state == "skipped":
        plain = NOT_SCANNED
    if detail and plain:
        return f"{plain} ({detail})"
    return str(detail) if detail else plain


def overall(status: str, scan_state: str | None) -> tuple[str, str]:
    """The submission's status as (text, css class suffix): a finished but unscanned one is amber."""
    if status == "complete" and scan_state == "skipped":
        return f"complete, {NOT_SCANNED}", "unscanned"
    return status.replace("_", " "), status
