"""Radiology report text: section extraction, whitespace normalisation, and the IU X-ray XML reader."""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET

import pandas as pd

from ..errors import DataError, MissingFileError, require_file

# Known section names (matched case-insensitively, followed by a colon). Any ALL-CAPS heading followed by a
# colon at the start of a line also ends the previous section.
KNOWN_SECTIONS = (
    "findings", "impression", "impressions", "conclusion", "conclusions", "comparison", "indication",
    "indications", "history", "clinical history", "technique", "examination", "exam", "reason for exam",
    "recommendation", "recommendations", "opinion", "summary", "procedure",
)
_ALIASES = {"impressions": "impression", "conclusions": "conclusion", "indications": "indication",
            "exam": "examination", "recommendations": "recommendation"}
_HEADER = re.compile(
    r"(?<![\w-])(?P<name>" + "|".join(sorted(map(re.escape, KNOWN_SECTIONS), key=len, reverse=True))
    + r")\s*:" + r"|(?:^|\n)\s*(?P<caps>[A-Z][A-Z /&-]{2,40})\s*:",
    re.IGNORECASE,
)


def normalize_whitespace(text: str) -> str:
    """Collapse runs of whitespace (newlines, tabs, double spaces) to single spaces and strip."""
    return " ".join(str(text).split())


def split_sections(text: str) -> dict[str, str]:
    """Split a report into ``{section name (lower case): text}``; the LAST occurrence of a section wins.

    Text before the first heading is returned under ``""``. Section names are normalised
    (``IMPRESSIONS`` → ``impression``).
    """
    text = str(text)
    matches = [m for m in _HEADER.finditer(text) if m.group("name") or _is_caps(m.group("caps"))]
    out: dict[str, str] = {}
    start = 0
    name = ""
    for m in matches:
        if m.start() > start or name:
            body = normalize_whitespace(text[start:m.start()])
            if body or name:
                out[name] = body
        raw = (m.group("name") or m.group("caps")).strip().lower()
        name, start = _ALIASES.get(raw, raw), m.end()
    body = normalize_whitespace(text[start:])
    if body or name:
        out[name] = body
    return out


def _is_caps(heading: str | None) -> bool:
    return bool(heading) and heading.upper() == heading and any(c.isalpha() for c in heading)


def extract_sections(text: str, sections: list[str] | tuple[str, ...] | None = ("findings", "impression")) -> str:
    """The text that feeds the text tower: the requested sections in order, whitespace-normalised.

    CheXzero-style: each section's text is the one after its LAST heading (``IMPRESSION:`` repeated in
    addenda). A report without any section heading is used whole. A report with headings but none of
    the requested sections gives ``""`` (the manifest check quarantines it).

    Args:
        text: the report.
        sections: section names (``findings``, ``impression``, ...); empty or None → the whole report.

    Returns:
        The selected text joined with single spaces.
    """
    if text is None or (isinstance(text, float) and text != text):
        return ""
    if not sections:
        return normalize_whitespace(text)
    parts = split_sections(text)
    if set(parts) <= {""}:  # no headings at all: free text, use it whole
        return parts.get("", "")
    wanted = [_ALIASES.get(s.lower(), s.lower()) for s in sections]
    return " ".join(parts[s] for s in wanted if parts.get(s))


def read_report_file(path: str) -> str:
    """Read a UTF-8 report file; one-line errors for missing or non-UTF-8 files."""
    require_file(path, "report file")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: report is not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from None


def read_iu_xray(tgz_path: str) -> pd.DataFrame:
    """Read the Indiana University chest X-ray XML reports (Open-i ``ecgen-radiology/*.xml`` in a .tgz).

    Args:
        tgz_path: the archive (e.g. ``../shared/data/reports/iu-xray-reports.tgz``).

    Returns:
        One row per report: ``uid`` (``CXR10``), ``comparison``, ``indication``, ``findings``,
        ``impression`` (empty string when absent), ``mesh_major`` / ``mesh_automatic`` (``;``-joined),
        ``images`` (``;``-joined image ids) and ``report`` (``FINDINGS: ... IMPRESSION: ...``).
    """
    require_file(tgz_path, "IU X-ray report archive")
    rows = []
    try:
        with tarfile.open(tgz_path, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".xml"):
                    rows.append(_parse_iu_xml(tar.extractfile(member).read(), member.name))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{tgz_path}: not a readable .tgz archive ({exc})") from None
    if not rows:
        raise MissingFileError(f"{tgz_path}: no .xml reports inside")
    df = pd.DataFrame(rows)
    df["_num"] = df["uid"].str.extract(r"(\d+)", expand=False).astype(float)
    return df.sort_values("_num").drop(columns="_num").reset_index(drop=True)


def _parse_iu_xml(data: bytes, name: str) -> dict:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(f"{name}: malformed XML ({exc})") from None
    uid = root.find("uId")
    row = {"uid": uid.get("id") if uid is not None else name.rsplit("/", 1)[-1].removesuffix(".xml")}
    for label in ("comparison", "indication", "findings", "impression"):
        row[label] = ""
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").lower()
        if label in row:
            row[label] = normalize_whitespace("".join(node.itertext()))
    row["mesh_major"] = ";".join(normalize_whitespace(n.text or "") for n in root.iter("major"))
    row["mesh_automatic"] = ";".join(normalize_whitespace(n.text or "") for n in root.iter("automatic"))
    row["images"] = ";".join(n.get("id", "") for n in root.iter("parentImage"))
    row["report"] = " ".join(f"{k.upper()}: {row[k]}" for k in ("findings", "impression") if row[k])
    return row
