"""List files: one video per line, `path,frame_count,label` (MSCA) or `path frame_count label` (TokShift).

The delimiter is detected per file from its first data line (a comma means the MSCA format). Fields are split
from the right, so paths may contain spaces (Kinetics class folders do: "air drumming"). Labels may be 0-based
class indices or class names; names are mapped to indices in sorted order.
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

log = logging.getLogger(__name__)


class ListFormatError(ValueError):
    """A malformed list line; the message names the file and the 1-based line number."""


@dataclass(frozen=True)
class VideoRecord:
    path: str  # frame folder, relative to the frame repo (root)
    num_frames: int  # F; frames are 1..F
    label: int


@dataclass
class VideoList:
    records: List[VideoRecord]
    class_names: Optional[List[str]]  # index -> name, when known
    source: str
    lines: Optional[List[int]] = None  # 1-based line of each record in the file, so errors can say file:line

    def where(self, i: int) -> str:
        """`file:line` of record i."""
        return f"{self.source}:{self.lines[i]}" if self.lines else self.source


def parse_list(text: str, source: str = "<list>", use_subset: bool = False) -> VideoList:
    """Parse a list file's text. `use_subset` keeps every 10th video (line index % 10 == 0), as the original."""
    rows = []  # (lineno, path, frames, label_str)
    comma = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if comma is None:
            comma = "," in line
        parts = [p.strip() for p in (line.rsplit(",", 2) if comma else line.rsplit(None, 2))]
        fmt = "path,frame_count,label" if comma else "path frame_count label"
        if len(parts) != 3 or not parts[0] or not parts[2]:
            raise ListFormatError(f"{source}:{lineno}: expected '{fmt}', got {raw!r}")
        try:
            frames = int(parts[1])
        except ValueError:
            raise ListFormatError(
                f"{source}:{lineno}: frame count {parts[1]!r} is not an integer (expected '{fmt}')"
            ) from None
        if frames < 0:
            raise ListFormatError(f"{source}:{lineno}: negative frame count {frames}")
        rows.append((lineno, parts[0].strip("/"), frames, parts[2]))

    numeric = all(_is_int(r[3]) for r in rows)
    if not numeric and any(_is_int(r[3]) for r in rows):
        lineno = next(r[0] for r in rows if _is_int(r[3]))
        raise ListFormatError(f"{source}:{lineno}: mixes integer labels and class-name labels")
    class_names = None
    if numeric:
        labels = [int(r[3]) for r in rows]
        bad = next((r for r, y in zip(rows, labels) if y < 0), None)
        if bad:
            raise ListFormatError(f"{source}:{bad[0]}: negative label {bad[3]}")
    else:
        class_names = sorted({r[3] for r in rows})
        index = {n: i for i, n in enumerate(class_names)}
        labels = [index[r[3]] for r in rows]
    records = [VideoRecord(r[1], r[2], y) for r, y in zip(rows, labels)]
    lines = [r[0] for r in rows]
    if use_subset:
        records, lines = records[::10], lines[::10]
    return VideoList(records, class_names, source, lines)


def check_labels(vl: VideoList, num_classes: int, classes_from: str) -> None:
    """Every label indexes a class; the first that does not is named by file:line (a wrong list or a
    classes.txt that does not match it)."""
    for i, r in enumerate(vl.records):
        if not 0 <= r.label < num_classes:
            raise ListFormatError(
                f"{vl.where(i)}: label {r.label} but only {num_classes} classes "
                f"(from {classes_from}); fix the line or the class list"
            )


def class_names_from_folders(records: Sequence[VideoRecord]) -> Optional[List[str]]:
    """Class names from `<split>/<class>/<video>` paths, if every label maps to exactly one parent folder."""
    names = {}
    for r in records:
        parent = posixpath.basename(posixpath.dirname(r.path))
        if not parent or names.setdefault(r.label, parent) != parent:
            return None
    if not names or sorted(names) != list(range(len(names))) or len(set(names.values())) != len(names):
        return None
    return [names[i] for i in range(len(names))]


def parse_class_names(text: str) -> List[str]:
    """`classes.txt`: one class name per line, line i is label i (an optional leading 'i,' or 'i ' is dropped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        head, sep, tail = line.partition(",") if "," in line else line.partition(" ")
        out.append(tail.strip() if sep and _is_int(head) else line)
    return out


def format_list(records: Sequence[VideoRecord], comma: bool = True) -> str:
    sep = "," if comma else " "
    return "".join(f"{r.path}{sep}{r.num_frames}{sep}{r.label}\n" for r in records)


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


_PRINTF_INT = re.compile(r"%(0?\d*)d")


def frame_name_format(fmt: str) -> str:
    """A frame file-name pattern as a str.format template. Accepts Python (`img_{:05d}.jpg`) and ffmpeg/printf
    (`img_%05d.jpg`) styles; the printf form is also easier to pass on a Hydra command line, where braces need
    quoting (`data.frame_format=%06d.jpg`)."""
    out = _PRINTF_INT.sub(lambda m: "{:" + m.group(1) + "d}", fmt)
    try:
        out.format(1)
    except (IndexError, KeyError, ValueError) as err:
        raise ValueError(
            f"data.frame_format={fmt!r} is not a frame-name pattern like 'img_{{:05d}}.jpg' or 'img_%05d.jpg' ({err})"
        ) from None
    if out.format(1) == out.format(2):
        raise ValueError(f"data.frame_format={fmt!r} has no frame-number field ({{:05d}} or %05d)")
    return out
