"""BEIR-format datasets: corpus, queries and qrels, read from CASCADE_DATA_DIR or downloaded.

Layout: ``NAME/corpus.jsonl[.gz]``, ``NAME/queries.jsonl``, ``NAME/qrels/SPLIT.tsv``.
Corpus lines are checked one by one and a bad line is reported by its number;
by default the load stops there, ``skip_bad=True`` skips and counts instead.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator

from cascade.errors import CorpusError, DatasetError
from cascade.settings import Settings
from cascade.text import LONE_SURROGATE, SURROGATE_ESCAPE, lone_surrogate

# Public BEIR archives (https://github.com/beir-cellar/beir): names that can be downloaded when not local.
BEIR_PUBLIC = {
    "scifact", "nfcorpus", "arguana", "fiqa", "scidocs", "trec-covid", "quora", "webis-touche2020",
    "climate-fever", "dbpedia-entity", "fever", "hotpotqa", "msmarco", "nq", "cqadupstack",
}


@dataclass
class LoadStats:
    """Lines read and skipped while loading a corpus: one count for every reason a line is bad.

    Both the parse (``iter_corpus``) and the typing of fields (:func:`connectors.records.typed_fields`)
    report through :meth:`bad`, so the CLI's message and the index manifest give the same number.
    """

    read: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # the first few skipped lines, for the report

    def bad(self, source: str, line_no: int, reason: str, skip: bool) -> None:
        """Count a bad line under ``skip``; else raise CorpusError (FILE:LINE: reason)."""
        if not skip:
            raise CorpusError(source, line_no, f"{reason} (use --skip-bad-lines to skip and count such lines)")
        self.skipped += 1
        if len(self.errors) < 5:
            self.errors.append(f"line {line_no}: {reason}")


def corpus_file(folder: Path) -> Path:
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"{folder}: no corpus.jsonl or corpus.jsonl.gz")


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _open_bytes(path: Path) -> IO[bytes]:
    """Corpus files are read as bytes and decoded line by line, so one bad byte is one bad line, not a crash."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # type: ignore[return-value]


def count_lines(path: Path) -> int:
    """Non-blank lines (the progress bar's total); a file that cannot be read through is a DatasetError."""
    try:
        with _open_bytes(path) as fh:
            return sum(1 for line in fh if line.strip())
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot be read to its end: {exc}") from None


def iter_corpus(path: Path, skip_bad: bool = False, stats: LoadStats | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) with ``_id`` as a string; blank lines are ignored."""
    stats = stats if stats is not None else LoadStats()
    seen: set[str] = set()
    try:
        fh = _open_bytes(path)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open: {exc.strerror or exc}") from None
    with fh:
        try:
            for n, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    rec = _parse_record(raw[3:] if n == 1 and raw.startswith(codecs.BOM_UTF8) else raw, seen)
                except ValueError as exc:
                    stats.bad(str(path), n, str(exc), skip_bad)
                    continue
                stats.read += 1
                yield n, rec
        except (OSError, EOFError, zlib.error) as exc:  # a truncated or corrupt .gz
            raise DatasetError(f"{path}: cannot read past line {stats.read + stats.skipped}: {exc}") from None


def _parse_record(raw: bytes, seen: set[str]) -> dict:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line)") from None
    try:
        rec = json.loads(line, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    if SURROGATE_ESCAPE.search(raw):
        bad = lone_surrogate(rec)
        if bad is not None:
            raise ValueError(f"{bad}: {LONE_SURROGATE}")
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    if "_id" not in rec:
        raise ValueError("no _id field")
    doc_id = rec["_id"]
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or str(doc_id).strip() == "":
        raise ValueError(f"_id must be a non-empty string or integer, got {doc_id!r}")
    rec["_id"] = str(doc_id)
    if rec["_id"] in seen:
        raise ValueError(f"duplicate _id {rec['_id']!r}")
    seen.add(rec["_id"])
    return rec


def _no_constant(name: str) -> float:
    """JSON has no NaN or Infinity; Python's parser accepts them, and a NaN in a number field breaks filters."""
    raise ValueError(f"{name} is not a JSON number (JSON has no NaN or Infinity; write null for a missing value)")



def load_queries(folder: Path) -> dict[str, str]:
    path = folder / "queries.jsonl"
    if not path.is_file():
        raise DatasetError(f"{path}: not found")
    out: dict[str, str] = {}
    with _open_text(path) as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out[str(rec["_id"])] = str(rec["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(f"{path}:{n}: expected a JSON object with _id and text ({exc})") from None
    return out


def qrels_splits(folder: Path) -> list[str]:
    return sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))


def load_qrels(folder: Path, split: str) -> dict[str, dict[str, int]]:
    path = folder / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise DatasetError(f"{path}: no qrels for split {split!r}; splits here: {', '.join(qrels_splits(folder)) or 'none'}")
    return read_qrels(path)


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """A qrels TSV (BEIR: query-id, corpus-id, score, with a header; or TREC's four columns)."""
    if not path.is_file():
        raise DatasetError(f"{path}: not found")
    out: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 and parts[0] in ("query-id", "query_id", "qid"):
                continue
            if not line.strip():
                continue
            if len(parts) == 4:  # TREC qrels: qid iter docid rel
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise DatasetError(f"{path}:{n}: expected query-id, corpus-id and score separated by tabs")
            try:
                out.setdefault(parts[0], {})[parts[1]] = int(parts[2])
            except ValueError:
                raise DatasetError(f"{path}:{n}: score {parts[2]!r} is not an integer") from None
    return out


def locate_dataset(name: str, settings: Settings, download: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> Path:
    """The folder of dataset ``name``: under CASCADE_DATA_DIR, in the download cache, or downloaded.

    A path (it has a ``/``) names a BEIR folder directly: the workbench's judgments
    (``.cascade/judgments/INDEX``) or any folder of queries and qrels of your own."""
    if "/" in name:
        folder = Path(name).expanduser()
        if not (folder / "queries.jsonl").is_file():
            raise DatasetError(f"{name}: not a dataset folder (a path names a folder with queries.jsonl and qrels/)")
        return folder
    if name in ("", ".", ".."):
        raise DatasetError(f"invalid dataset name {name!r}")
    if settings.data_dir is not None:
        d = Path(settings.data_dir).expanduser() / name
        if d.is_dir():
            return d
    cached = settings.cache_dir / "datasets" / name
    if cached.is_dir():
        return cached
    if not download or name not in BEIR_PUBLIC:
        where = settings.data_dir or "(CASCADE_DATA_DIR unset)"
        avail = sorted(p.name for p in Path(settings.data_dir).iterdir() if p.is_dir()) if settings.data_dir and Path(settings.data_dir).is_dir() else []
        hint = f"; available there: {', '.join(avail)}" if avail else ""
        raise DatasetError(f"dataset {name!r} not found under {where}{hint}")
    return download_beir(name, settings, progress)


def download_beir(name: str, settings: Settings, progress: Callable[[int, int], None] | None = None) -> Path:
    """Fetch ``{beir_url}/{name}.zip`` into the cache and unpack it (an interrupted download leaves nothing)."""
    url = f"{settings.beir_url.rstrip('/')}/{name}.zip"
    dest = settings.cache_dir / "datasets"
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        zpath = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(zpath, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        except (urllib.error.URLError, OSError) as exc:
            raise DatasetError(f"could not download {url}: {getattr(exc, 'reason', exc)}; "
                               f"set CASCADE_DATA_DIR to a folder holding {name}/") from None
        try:
            with zipfile.ZipFile(zpath) as zf:
                zf.extractall(tmp)
        except zipfile.BadZipFile:
            raise DatasetError(f"{url}: not a zip archive") from None
        unpacked = Path(tmp) / name
        if not unpacked.is_dir():
            raise DatasetError(f"{url}: archive has no top-level folder {name}/")
        corpus_file(unpacked)
        target = dest / name
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return target
