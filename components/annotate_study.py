"""What the Annotate tab shows about a session shared by several annotators: the progress line, the
session chooser's entries, and the guidelines a session or dataset carries.

Dataset guidelines are a Markdown file beside the dataset: ``guidelines.md`` in a dataset folder, or
``<name>.guidelines.md`` next to ``<name>.jsonl``. They are recorded in the store when read (a changed
file is a new version), so each judgment can name the version it was made under. A session's own
guidelines (typed when it is started, updated by its lead) come before the dataset's.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

#: Dropdown values of the session chooser besides a session id.
RESUME_OR_NEW = ""
NEW_SESSION = "new"
MAX_GUIDELINES_FILE_BYTES = 200_000


def progress_html(done: int, total: int, *, k: int = 1, judgments: int | None = None, mine: int | None = None) -> str:
    """The session's items done (each judged k times), and, for a shared session, the judgments made of
    those wanted and the annotator's own share."""
    percent = 100 * done / total if total else 0
    line = f"{done} / {total} judged ({percent:.0f}%)"
    if k > 1 and judgments is not None:
        line = f"{done} / {total} items complete, each by {k} annotators ({percent:.0f}%) · {judgments} / {total * k} judgments"
    if mine is not None and (k > 1 or mine != done):
        line += f" · you: {mine} judged"
    return (
        f"<div class='rl-meta' id='ann-progress-text'>{html.escape(line)}</div>"
        f"<div class='rl-progress' id='ann-progress'><div style='width:{percent:.1f}%'></div></div>"
    )


def session_label(session: dict[str, Any]) -> str:
    """How an open session is offered to someone who may join it."""
    bits = [f"Join {session['annotator']}'s session", f"k={session.get('k', 1)}"]
    if session.get("blind"):
        bits.append("blind")
    bits.append(f"{session['done_count']}/{session['total']} items done")
    bits.append(session["id"][:8])
    return " · ".join(bits)


def session_choices(sessions: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [("Resume my session, or start a new one", RESUME_OR_NEW), ("Start a new session", NEW_SESSION)] + [
        (session_label(s), s["id"]) for s in sessions
    ]


def guidelines_file(spec: str) -> Path | None:
    """The Markdown guidelines file of a dataset spec (a folder or a JSONL file), if there is one."""
    if ":" in spec.split("/", 1)[0] and not Path(spec).exists():  # easyvqa:..., hf:...
        return None
    path = Path(spec)
    candidates = [path / "guidelines.md", path / "GUIDELINES.md"] if path.is_dir() else [
        path.with_name(f"{path.stem}.guidelines.md")]
    for candidate in candidates:
        if candidate.is_file() and candidate.stat().st_size <= MAX_GUIDELINES_FILE_BYTES:
            return candidate
    return None


def resolve_guidelines(store: Any, session_id: str, spec: str) -> dict[str, Any] | None:
    """The guidelines shown for a session: its own latest version, else its dataset's (from the file, recorded
    as a new version when it changed, else the latest stored). None when there are none."""
    own = store.guidelines("session", session_id)
    if own and own["text"].strip():
        return own
    path = guidelines_file(spec)
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        if text.strip():
            return store.set_guidelines("dataset", spec, text)
    stored = store.guidelines("dataset", spec)
    return stored if stored and stored["text"].strip() else None


def guidelines_label(guidelines: dict[str, Any] | None) -> str:
    if not guidelines:
        return "Guidelines"
    whose = "this session's" if guidelines["scope"] == "session" else "the dataset's"
    return f"Guidelines ({whose}, version {guidelines['version']})"
