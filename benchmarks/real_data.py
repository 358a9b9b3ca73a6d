"""Real English prose for the SmolLM2-135M runs of issue 33 (L_c = 8,192 extended to L_t = 16,384 or 32,768),
built offline from five pinned Debian packages: fine-tuning and held-out documents from different books and authors.

    python benchmarks/real_data.py                                   # -> .cache/real/data (13 MB of .deb files)
    python benchmarks/real_data.py --out DIR --tokenizer /work/side/smollm2-135m   # + SmolLM2 token counts
    python -m pytest tests/test_real_data.py -q                      # the cleaning and cutting, no download

finetune.jsonl      Jane Austen's six novels (r-cran-janeaustenr), C. H. Spurgeon's The Treasury of David (1869-1885;
                    sword-comm-tdavid) and Matthew Henry's Concise Commentary on the Whole Bible (1706;
                    sword-comm-mhcc): 4.7M SmolLM2 tokens in 147 documents of 23k-57k tokens (>= 100,000
                    characters), cut at chapter, psalm or Bible book boundaries (a psalm or book longer than 170,000
                    characters first at paragraph breaks). A training example's first chunk starts at its document's
                    start (Eq. 5's v_0 = 0), so whole books would give the same few openings every epoch.
finetune-32k.jsonl  the same text in 99 documents of >= 155,000 characters (>= 32,768 tokens), for L_t = 32,768
                    (full-length fine-tuning reads each document's first L_t tokens).
heldout.jsonl       four novels by other authors: Great Expectations (Dickens), The War of the Worlds (Wells) and
                    Twenty Thousand Leagues under the Sea (Verne, in English) from r-cran-tidytext's books.rda (its
                    copy of Pride and Prejudice is left out: Austen is fine-tuning text), and Moby Dick (Melville)
                    from r-cran-tokenizers: 18 documents of >= 155,000 characters (>= 32,768 tokens) cut at chapter
                    boundaries, so that evaluate.py ppl --max-tokens 32767 --min-tokens 32767 reads every one.

`cut` makes as many documents of a work as its chapters allow, of about equal size. The files list their documents
interleaved across works (train.py takes the first steps x batch documents in file order, evaluate.py the first
--docs), one {"text": ...} a line, as data.py reads them. The texts are cleaned: the R data (R's serialisation
format, read here) and the SWORD modules (zlib blocks of OSIS markup) are decoded, Project Gutenberg's header,
footer and notes are stripped, the markup is dropped and every paragraph is one line, with a blank line between
paragraphs. SOURCES.md says which package, version and licence each work comes from and how many documents,
characters (and with --tokenizer, tokens: data.Tokenizer, BOS and EOS not counted) each file holds.

Downloads use `apt-get download NAME[:ARCH]=VERSION` (no root needed; run `apt-get update` once first) into
--downloads, and each .deb is checked against the sha256 pinned below before it is read (in Python: ar, then tar).
The stage is cached: when --out's SHA256SUMS verifies and settings.json matches this script, its packages and
--tokenizer, a rerun does nothing and says so. Each file is written under a temporary name and renamed, SHA256SUMS
last. A download that fails or does not match: one line, exit 1; a bad flag: one line, exit 2.
"""
import argparse
import bz2
import gzip
import hashlib
import html
import io
import json
import lzma
import math
import os
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data import CACHE, Tokenizer  # noqa: E402


@dataclass(frozen=True)
class Output:
    """A file of documents of >= least characters cut from the works of one split (`cut`), for runs up to L_t =
    tokens: with --tokenizer every document is checked to have >= tokens tokens (BOS and EOS not counted)."""
    name: str
    split: str
    tokens: int
    least: int
    most: int


# SmolLM2's tokenizer reads these texts at 3.8-4.5 characters a token (measured on every document and 60,000-character
# window): least / 4.6 leaves a margin; most only bounds the parts a longer psalm or Bible book is first cut into.
OUTPUTS = (Output("finetune.jsonl", "finetune", 16_384, 100_000, 170_000),  # >= 21.7k tokens, most 24k-32k
           Output("finetune-32k.jsonl", "finetune", 32_768, 155_000, 250_000),  # the same works, >= 33.7k tokens
           Output("heldout.jsonl", "heldout", 32_768, 155_000, 250_000))


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    sha256: str
    size: int
    licence: str

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version}_{self.arch}.deb"


PACKAGES = {p.name: p for p in (
    Package("r-cran-janeaustenr", "1.0.0-1", "all", "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
            1_626_392, "MIT (the package); the novels are public domain (Project Gutenberg's texts)"),
    Package("r-cran-tidytext", "0.4.1-1", "all", "8d693a8772b57e2dbdc907aa946fbeeefb03ba3eb2bbea86d5c888a4d15956ad",
            3_018_300, "MIT (the package); the books are public domain (Project Gutenberg's texts)"),
    Package("r-cran-tokenizers", "0.3.0-1", "amd64",
            "6312f013ebfde5650235bfd7ba5c44d9e4cf9f2da9855337c9483fe778f0d8c7",
            657_008, "MIT (the package); Moby Dick is public domain (Project Gutenberg's eBook #2701)"),
    Package("sword-comm-tdavid", "2.1-1", "all", "bcbfad701c5c4a061475b58309cebc42755a59e87478c8355227c5e046412b3f",
            5_148_904, "public domain (the package's copyright file: the final volume was released in 1885)"),
    Package("sword-comm-mhcc", "2.0-1", "all", "06f748215de78ff48fdfdee93e3ffc5af6318b976485f7aedf22309236967e35",
            1_782_348, "public domain (\"Public Domain--Copy Freely\"); the Debian packaging GPL-2+"),
)}

JANEAUSTENR = "./usr/lib/R/site-library/janeaustenr/data/Rdata"
TOKENIZERS = "./usr/lib/R/site-library/tokenizers/data/Rdata"
TIDYTEXT = "./usr/lib/R/site-library/tidytext/extdata/books.rda"
TDAVID = "./usr/share/sword/modules/comments/zcom/tdavid/ot"
MHCC = "./usr/share/sword/modules/comments/zcom/mhcc/"


@dataclass(frozen=True)
class Work:
    title: str
    author: str
    package: str
    split: str  # "finetune" or "heldout"


WORKS = (
    Work("Emma", "Jane Austen", "r-cran-janeaustenr", "finetune"),
    Work("Mansfield Park", "Jane Austen", "r-cran-janeaustenr", "finetune"),
    Work("Northanger Abbey", "Jane Austen", "r-cran-janeaustenr", "finetune"),
    Work("Persuasion", "Jane Austen", "r-cran-janeaustenr", "finetune"),
    Work("Pride and Prejudice", "Jane Austen", "r-cran-janeaustenr", "finetune"),
    Work("Sense and Sensibility", "Jane Austen", "r-cran-janeaustenr", "finetune"),
    Work("The Treasury of David", "C. H. Spurgeon", "sword-comm-tdavid", "finetune"),
    Work("Concise Commentary on the Whole Bible", "Matthew Henry", "sword-comm-mhcc", "finetune"),
    Work("Great Expectations", "Charles Dickens", "r-cran-tidytext", "heldout"),
    Work("Moby Dick; or The Whale", "Herman Melville", "r-cran-tokenizers", "heldout"),
    Work("The War of the Worlds", "H. G. Wells", "r-cran-tidytext", "heldout"),
    Work("Twenty Thousand Leagues under the Sea", "Jules Verne", "r-cran-tidytext", "heldout"),
)
AUSTEN = {"Emma": "emma", "Mansfield Park": "mansfieldpark", "Northanger Abbey": "northangerabbey",
          "Persuasion": "persuasion", "Pride and Prejudice": "prideprejudice",
          "Sense and Sensibility": "sensesensibility"}  # janeaustenr's object names


# ---------------------------------------------------------------- the archives

def deb_files(path: Path, wanted) -> dict[str, bytes]:
    """The members of a .deb's data.tar.* whose names start with wanted (a prefix or a tuple of them): a .deb is an
    ar archive holding that tar."""
    blob = path.read_bytes()
    if blob[:8] != b"!<arch>\n":
        raise ValueError(f"{path}: not a .deb (ar) archive")
    at = 8
    while at + 60 <= len(blob):
        name, size = blob[at:at + 16].decode().strip().rstrip("/"), int(blob[at + 48:at + 58].decode())
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(blob[at + 60:at + 60 + size])) as tar:  # xz / gz: tarfile's own
                return {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and m.name.startswith(wanted)}
        at += 60 + size + size % 2  # members are 2-byte aligned
    raise ValueError(f"{path}: no data.tar member")


def fetch(package: Package, downloads: Path) -> Path:
    """The package's .deb in downloads, from `apt-get download` unless a copy with the pinned sha256 is there."""
    path = downloads / package.filename
    if path.is_file() and sha256(path) == package.sha256:
        return path
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        spec = f"{package.name}:{package.arch}={package.version}" if package.arch != "all" else \
            f"{package.name}={package.version}"
        try:
            run = subprocess.run(["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True)
        except FileNotFoundError:
            raise RuntimeError(f"{package.name}: apt-get not found (this stage reads Debian packages)") from None
        got = Path(tmp) / package.filename
        if run.returncode or not got.is_file():
            lines = run.stderr.strip().splitlines()
            last = ([line for line in lines if line.startswith("E:")] or lines or ["no file"])[-1]
            raise RuntimeError(f"apt-get download {spec} failed ({last}); run `apt-get update` first?")
        if sha256(got) != package.sha256:
            raise RuntimeError(f"{package.filename}: sha256 {sha256(got)} is not the pinned {package.sha256}")
        os.replace(got, path)
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- R's serialisation format (XDR), as R writes data

class RVector(list):
    """An R vector (a list of its elements) with its attributes (names, class, ...), {} when it has none."""
    attributes: dict


class _RReader:
    """The subset of R's serialize() format that data files use: NULL, symbols, pairlists, character, logical,
    integer, double and list vectors, with attributes. Anything else (closures, environments, ALTREP) is refused."""

    def __init__(self, blob: bytes):
        if blob[:2] != b"X\n":
            raise ValueError("not R's XDR serialisation")
        self.blob, self.at, self.symbols = blob, 2, []
        version = self.int()
        self.at += 8  # the writer's and the minimal reader's R versions
        if version == 3:
            n = self.int()
            self.at += n  # the native encoding's name
        elif version != 2:
            raise ValueError(f"R serialisation version {version}")

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.blob, self.at)
        self.at += 4
        return value

    def length(self) -> int:
        n = self.int()
        return n if n != -1 else (self.int() << 32) + self.int()  # a long vector

    def item(self):
        flags = self.int()
        kind, levels = flags & 0xFF, flags >> 12
        has_attributes, has_tag = flags & (1 << 9), flags & (1 << 10)
        if kind == 254:  # NILVALUE_SXP
            return None
        if kind == 255:  # REFSXP: a symbol read before
            index = flags >> 8 or self.int()
            return self.symbols[index - 1]
        if kind == 1:  # SYMSXP
            self.symbols.append(self.item())
            return self.symbols[-1]
        if kind == 2:  # LISTSXP, a pairlist: {tag: value}
            if has_attributes:
                self.item()  # a pairlist's own attributes: not kept
            tag = self.item() if has_tag else None
            head, tail = self.item(), self.item()
            return {tag: head, **(tail or {})}
        if kind == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None  # NA_character_
            raw = self.blob[self.at:self.at + n]
            self.at += n
            return raw.decode("latin-1" if levels & 4 else "utf-8")
        if kind in (10, 13, 14):  # logical, integer, double
            n, code, width = self.length(), "d" if kind == 14 else "i", 8 if kind == 14 else 4
            value = RVector(struct.unpack_from(f">{n}{code}", self.blob, self.at))
            self.at += n * width
        elif kind in (16, 19):  # character, list
            value = RVector(self.item() for _ in range(self.length()))
        else:
            raise ValueError(f"R object of SEXP type {kind} at byte {self.at - 4}: not a data vector")
        value.attributes = self.item() if has_attributes else {}
        return value


def unserialize(blob: bytes):
    return _RReader(blob).item()


def named(vector: RVector) -> dict:
    """An R list or vector by its names attribute."""
    return dict(zip(vector.attributes["names"], vector))


def lazyload(files: dict[str, bytes], stem: str) -> dict:
    """The objects of an R package's data/Rdata.rdx + .rdb (lazy-load database): a gzipped index of (offset, length)
    per object name; each record a 4-byte big-endian length, then zlib data (or a type byte, then zlib/bzip2/xz)."""
    index = named(unserialize(gzip.decompress(files[stem + ".rdx"])))
    rdb, objects = files[stem + ".rdb"], {}
    for name, (offset, length) in named(index["variables"]).items():
        record = rdb[offset:offset + length]
        (size,) = struct.unpack(">I", record[:4])
        kind = record[4:5]  # compress = 2 or 3 write a type byte; compress = TRUE none (zlib's own 0x78 follows)
        openers = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}
        blob = openers[kind](record[5:]) if kind in openers else zlib.decompress(record[4:])
        if len(blob) != size:
            raise ValueError(f"{stem}.rdb: {name} decompresses to {len(blob)} bytes, not {size}")
        objects[name] = unserialize(blob)
    return objects


def rda(blob: bytes) -> dict:
    """The objects of a .rda file (save()'s format): compressed "RDX2\\n" or "RDX3\\n", then a pairlist."""
    for magic, opener in ((b"\x1f\x8b", gzip.decompress), (b"BZh", bz2.decompress), (b"\xfd7zXZ", lzma.decompress)):
        if blob.startswith(magic):
            blob = opener(blob)
    if blob[:5] not in (b"RDX2\n", b"RDX3\n"):
        raise ValueError("not an .rda file")
    return unserialize(blob[5:])


# ---------------------------------------------------------------- SWORD commentaries (zCom, zCom4) and OSIS

def sword_blocks(files: dict[str, bytes], stem: str, wide: bool) -> list[str]:
    """The texts of a SWORD zCom module's compressed blocks (a chapter or a book each), entries in verse order.
    stem.bzs / .czs: per block (offset, size, uncompressed size) in stem.bzz / .czz, zlib; stem.bzv / .czv: per
    verse (block, offset, size), size 2 bytes (zCom) or 4 (zCom4, wide). A verse linked to another's entry points
    at the same bytes: each entry is read once."""
    ext = "cz" if wide else "bz"
    index, verses, data = (files[f"{stem}.{ext}{x}"] for x in "svz")
    blocks = []
    for at in range(0, len(index), 12):
        offset, size, usize = struct.unpack_from("<III", index, at)
        blocks.append(zlib.decompress(data[offset:offset + size]) if size else b"")
        if len(blocks[-1]) != usize:
            raise ValueError(f"{stem}.{ext}z: block {len(blocks) - 1} has {len(blocks[-1])} bytes, not {usize}")
    entry, seen, texts = ("<III", 12) if wide else ("<IIH", 10), set(), [[] for _ in blocks]
    for at in range(0, len(verses), entry[1]):
        block, offset, size = struct.unpack_from(entry[0], verses, at)
        if size and (block, offset) not in seen:
            seen.add((block, offset))
            texts[block].append(blocks[block][offset:offset + size].decode("utf-8"))
    return ["".join(t) for t in texts]


OSIS_BREAKS = re.compile(r"</?(?:div|chapter|title|list|item|table|row|lg)\b[^>]*>")  # paragraph ends
OSIS_NOTES = re.compile(r"<note\b.*?</note>", re.S)


def osis_text(markup: str) -> str:
    """Plain text of OSIS markup: divisions, titles, list items and table rows are paragraphs of their own (a row's
    cells one after another), a poem's lines (<l>, <lb>) lines of one; notes are dropped, other tags (hi,
    reference, milestone, ...) leave their text; entities are decoded."""
    text = OSIS_BREAKS.sub("\n\n", OSIS_NOTES.sub("", markup).replace("</cell>", " "))
    text = re.sub(r"<(?:l|lb)\b[^>]*>", "\n", text)
    return html.unescape(re.sub(r"<[^>]*>", "", text))


# ---------------------------------------------------------------- cleaning and cutting

GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (?:THIS|THE) PROJECT GUTENBERG EBOOK.*$", re.I | re.M)
GUTENBERG_END = re.compile(r"^(?:\*{3}\s*END OF (?:THIS|THE) PROJECT GUTENBERG EBOOK|End of (?:the )?Project "
                           r"Gutenberg)", re.I | re.M)
GUTENBERG_NOTE = re.compile(r"project gutenberg|gutenberg project|\betexts?\b|^produced by\b", re.I)
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # stray control bytes (two in The Treasury of David)
HEADING = re.compile(r"(?:CHAPTER|Chapter|BOOK|Book|PART|Part|VOLUME|Volume)\s+(?:[IVXLC]+|\d+|[A-Z][A-Za-z]*)\b")


def strip_gutenberg(text: str) -> str:
    """The book without Project Gutenberg's licence header (through the START line), its footer (from "End of
    Project Gutenberg's ..." or the END line) and any paragraph naming Project Gutenberg or its etexts (editors'
    and transcribers' notes) or starting "Produced by"."""
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    start = GUTENBERG_START.search(text)
    text = text[start.end():] if start else text
    end = GUTENBERG_END.search(text)
    text = text[:end.start()] if end else text
    paras = (p.strip() for p in re.split(r"\n\s*\n", text))
    return "\n\n".join(p for p in paras if p and not GUTENBERG_NOTE.search(p))


def paragraphs(text: str) -> list[str]:
    """The paragraphs of a text (blank-line separated), each on one line: hard line wraps and runs of white space
    (no-break spaces included) become one space."""
    text = CONTROL.sub("", text.replace("\r\n", "\n"))
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def chapters(paras: list[str]) -> list[str]:
    """The text cut before each chapter, book, part or volume heading (the first of a run of headings: "VOLUME I",
    "CHAPTER I" begin one section); what precedes the first heading (title, preface) opens the first section."""
    sections, current = [], []
    for i, para in enumerate(paras):
        heading = len(para) < 80 and HEADING.match(para)
        after_heading = i and len(paras[i - 1]) < 80 and HEADING.match(paras[i - 1])
        if heading and not after_heading and current:
            sections.append("\n\n".join(current))
            current = []
        current.append(para)
    if current:
        sections.append("\n\n".join(current))
    return sections


def greedy(parts: list[str], share: float) -> list[str]:
    """Consecutive parts joined by paragraph breaks, a document closed as soon as it has >= share characters;
    the rest, however short, is the last."""
    docs, current, size = [], [], -2
    for part in parts:
        current.append(part)
        size += len(part) + 2
        if size >= share:
            docs.append("\n\n".join(current))
            current, size = [], -2
    return docs + ["\n\n".join(current)] * bool(current)


def cut(sections: list[str], least: int, most: int) -> list[str]:
    """A work's text as the most documents of >= least characters it makes, each of consecutive whole sections
    (chapters), so that every document starts at a chapter's start, of about equal size where the chapters allow.
    A section longer than most is first cut at paragraph breaks into parts of about equal size, each <= most plus a
    paragraph. The documents joined by a paragraph break are the sections joined so; a work shorter than least
    gives none."""
    parts = []
    for section in sections:
        n = math.ceil(len(section) / most)
        parts += greedy(section.split("\n\n"), len(section) / n) if n > 1 else [section]
    docs = greedy(parts, least)  # closing each document as soon as it can makes the most of them
    if len(docs) > 1 and len(docs[-1]) < least:
        docs[-2:] = ["\n\n".join(docs[-2:])]
    if not docs or len(docs[0]) < least:
        return []
    starts = [0]  # where each part begins in the joined text
    for part in parts:
        starts.append(starts[-1] + len(part) + 2)
    total, n = starts[-1] - 2, len(docs)  # as many documents again, each begun at the part nearest its share
    bounds = [0] + [min(range(len(parts)), key=lambda i: abs(starts[i] - k * total / n)) for k in range(1, n)]
    even = ["\n\n".join(parts[a:b]) for a, b in zip(bounds, bounds[1:] + [len(parts)])]
    return even if all(len(d) >= least for d in even) else docs


def interleave(groups: list[list]) -> list:
    """Every group's items in order, the groups spread evenly through the list (item k of a group of n sits at
    (k + 1/2) / n of the way): the first few documents of a file come from every work."""
    keyed = [((k + 0.5) / len(g), i, k) for i, g in enumerate(groups) for k in range(len(g))]
    return [groups[i][k] for _, i, k in sorted(keyed)]


# ---------------------------------------------------------------- the works

def texts(debs: dict[str, Path]) -> dict[str, list[str]]:
    """Each work's sections (chapters; psalms; Bible books), cleaned, paragraphs one a line."""
    out = {}
    files = deb_files(debs["r-cran-janeaustenr"], JANEAUSTENR)
    austen = lazyload(files, JANEAUSTENR)
    for title, name in AUSTEN.items():
        out[title] = chapters(paragraphs("\n".join(line or "" for line in austen[name])))
    files = deb_files(debs["r-cran-tokenizers"], TOKENIZERS)
    (moby,) = lazyload(files, TOKENIZERS)["mobydick"]
    out["Moby Dick; or The Whale"] = chapters(paragraphs(strip_gutenberg(moby)))
    books = named(rda(deb_files(debs["r-cran-tidytext"], TIDYTEXT)[TIDYTEXT])["books"])
    lines = {}
    for line, title in zip(books["text"], books["title"]):
        lines.setdefault(title, []).append(line or "")
    for work in WORKS:
        if work.package == "r-cran-tidytext":
            out[work.title] = chapters(paragraphs(strip_gutenberg("\n".join(lines[work.title]))))
    files = deb_files(debs["sword-comm-tdavid"], TDAVID)
    blocks = sword_blocks(files, TDAVID, True)  # the module's header, the preface, then a block a psalm
    out["The Treasury of David"] = [s for s in ("\n\n".join(paragraphs(osis_text(b))) for b in blocks) if s]
    files = deb_files(debs["sword-comm-mhcc"], MHCC)
    blocks = sword_blocks(files, MHCC + "ot", False) + sword_blocks(files, MHCC + "nt", False)  # a block a book
    out["Concise Commentary on the Whole Bible"] = [s for s in ("\n\n".join(paragraphs(osis_text(b)))
                                                                for b in blocks) if s]
    return out


def build(debs: dict[str, Path]) -> dict[Output, list[tuple[Work, str]]]:
    """Each output file's (work, document) list, the works interleaved."""
    sections = texts(debs)
    return {o: interleave([[(w, doc) for doc in cut(sections[w.title], o.least, o.most)]
                           for w in WORKS if w.split == o.split]) for o in OUTPUTS}


# ---------------------------------------------------------------- the stage

def write_atomic(path: Path, data: bytes):
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def verified(out: Path, settings: dict) -> bool:
    """Whether out holds this stage's files, as SHA256SUMS lists them, made with these settings."""
    sums = out / "SHA256SUMS"
    if not sums.is_file():
        return False
    listed = dict(reversed(line.split("  ", 1)) for line in sums.read_text().splitlines() if "  " in line)
    if set(listed) != {o.name for o in OUTPUTS} | {"SOURCES.md", "settings.json"}:
        return False
    if any(not (out / name).is_file() or sha256(out / name) != digest for name, digest in listed.items()):
        return False
    return json.loads((out / "settings.json").read_text()) == settings


def sources_md(files: dict[Output, list[tuple[Work, str]]], counts: dict[Output, list[int]] | None) -> str:
    """SOURCES.md: the packages, which works went where, and the documents, characters and tokens per file."""
    lines = ["# Sources of " + ", ".join(o.name for o in OUTPUTS), "",
             "Written by benchmarks/real_data.py (its docstring says how). Every package is a Debian bookworm .deb "
             "(`apt-get download`), checked against its sha256 in the script.", "",
             "| package | version | size | sha256 | licence |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {p.name} | {p.version} ({p.arch}) | {p.size:,} B | `{p.sha256[:16]}…` | {p.licence} |"
              for p in PACKAGES.values()]
    for o, docs in files.items():
        tokens = counts[o] if counts else None
        lines += ["", f"## {o.name}: {len(docs)} documents, {sum(len(t) for _, t in docs):,} characters"
                  + (f", {sum(tokens):,} tokens" if tokens else ""), "",
                  f"Documents of >= {o.least:,} characters, for L_t up to {o.tokens:,}" +
                  (f" (each has >= {o.tokens:,} tokens: checked)." if tokens else "."), "",
                  "| work | author | package | documents | characters" + (" | tokens (min-max) |" if tokens else " |"),
                  "| --- | --- | --- | --- | ---" + (" | --- |" if tokens else " |")]
        for work in (w for w in WORKS if w.split == o.split):
            mine = [i for i, (w, _) in enumerate(docs) if w == work]
            row = f"| {work.title} | {work.author} | {work.package} | {len(mine)} | " \
                  f"{sum(len(docs[i][1]) for i in mine):,}"
            if tokens:
                t = [tokens[i] for i in mine]
                row += f" | {sum(t):,} ({min(t):,}-{max(t):,})"
            lines.append(row + " |")
    if counts:
        lines += ["", "Tokens: data.Tokenizer of the tokenizer in settings.json, the text alone (no BOS / EOS)."]
    return "\n".join(lines) + "\n"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr and exit 2, as every script here
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv=None):
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=CACHE / "real" / "data",
                   help="folder for the .jsonl files, SOURCES.md, settings.json and SHA256SUMS")
    p.add_argument("--downloads", type=Path, default=CACHE / "real" / "debs", help="folder for the .deb files")
    p.add_argument("--tokenizer", type=Path, help="count and check tokens with this data.Tokenizer (a checkpoint "
                   "folder or its tokenizer file; SmolLM2's for issue 33)")
    a = p.parse_args(argv)
    for flag, path in (("--out", a.out), ("--downloads", a.downloads)):
        if path.exists() and not path.is_dir():
            p.error(f"{flag} {path} is not a folder")
    tokenizer = None
    if a.tokenizer is not None:
        try:
            tokenizer = Tokenizer(a.tokenizer)
        except (OSError, ValueError) as e:
            p.error(f"--tokenizer {a.tokenizer}: {e}")
    settings = {"script": sha256(Path(__file__)), "packages": {n: pk.sha256 for n, pk in PACKAGES.items()},
                "tokenizer": None if tokenizer is None else {"path": str(a.tokenizer.resolve()),
                                                             "sha256": sha256(tokenizer.path)}}
    if verified(a.out, settings):
        print(f"{a.out}: up to date (SHA256SUMS verified; same script, packages and tokenizer); nothing done")
        return
    began = time.perf_counter()
    try:
        debs = {name: fetch(package, a.downloads) for name, package in PACKAGES.items()}
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    fetched = time.perf_counter()
    files = build(debs)
    built = time.perf_counter()
    counts = None
    if tokenizer is not None:
        counts = {o: [len(tokenizer.encode(t, bos=False)) for _, t in docs] for o, docs in files.items()}
        for o, n in counts.items():
            short = [i for i, k in enumerate(n) if k < o.tokens]
            if short:
                print(f"error: {o.name} document {short[0]} ({files[o][short[0]][0].title}) has {n[short[0]]:,} "
                      f"tokens < {o.tokens:,}; nothing written", file=sys.stderr)
                raise SystemExit(1)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "SHA256SUMS").unlink(missing_ok=True)  # no stale list vouches for a half-replaced folder
    blobs = {o.name: "".join(json.dumps({"text": t}) + "\n" for _, t in docs).encode() for o, docs in files.items()}
    blobs["SOURCES.md"] = sources_md(files, counts).encode()
    blobs["settings.json"] = (json.dumps(settings, indent=1) + "\n").encode()
    for name, blob in blobs.items():
        write_atomic(a.out / name, blob)
    write_atomic(a.out / "SHA256SUMS", "".join(f"{hashlib.sha256(blob).hexdigest()}  {name}\n"
                                               for name, blob in sorted(blobs.items())).encode())
    for o, docs in files.items():
        total = f", {sum(counts[o]):,} tokens" if counts else ""
        print(f"{a.out / o.name}: {len(docs)} documents, {sum(len(t) for _, t in docs):,} characters{total}")
    print(f"downloads {fetched - began:.1f} s, cleaning and cutting {built - fetched:.1f} s"
          + (f", counting tokens {time.perf_counter() - built:.1f} s" if counts else ""))


if __name__ == "__main__":
    main()
