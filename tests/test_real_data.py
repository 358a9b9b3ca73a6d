"""benchmarks/real_data.py without its packages: the Project Gutenberg stripping, the paragraphs and chapters, the
cutting into documents (against a brute-force count), the interleaving, and each archive reader on a small file
written here by an independent encoder (R's XDR serialisation, a SWORD zCom module, a .deb); apt-get is a stand-in
script, the flags' failures one line each.

    python -m pytest tests/test_real_data.py -q
"""
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import struct
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import real_data  # noqa: E402

BOOK = ("\ufeffThe Project Gutenberg EBook of A Tale, by Some One\r\n\r\nThis eBook is for the use of anyone anywhere "
        "at no cost and with\r\nalmost no restrictions whatsoever.\r\n\r\n{start}\r\n\r\n\r\nProduced by A. "
        "Volunteer\r\n\r\nA TALE\r\n\r\nCHAPTER I\r\n\r\nIt was a dark\r\nand  stormy night.\r\n  \r\n[Project "
        "Gutenberg Editor's Note: there is another version of\r\nthis work etext98/tale10.txt]\r\n\r\nCHAPTER II"
        "\r\n\r\nThe end.\r\n\r\n{end}\r\n\r\nSection 3. Information about the Project Gutenberg Literary Archive "
        "Foundation\r\n\r\nThe Foundation's principal office is in Alaska.\r\n")
TALE = "A TALE\n\nCHAPTER I\n\nIt was a dark\nand  stormy night.\n\nCHAPTER II\n\nThe end."


@pytest.mark.parametrize("start, end", [
    ("*** START OF THIS PROJECT GUTENBERG EBOOK A TALE ***", "End of the Project Gutenberg EBook of A Tale, by Some "
     "One\r\n\r\n*** END OF THIS PROJECT GUTENBERG EBOOK A TALE ***"),
    ("*** START OF THE PROJECT GUTENBERG EBOOK A TALE ***", "*** END OF THE PROJECT GUTENBERG EBOOK A TALE ***"),
    ("*** START OF THIS PROJECT GUTENBERG EBOOK A TALE ***", "End of Project Gutenberg's A Tale, by Some One"),
])
def test_strip_gutenberg_keeps_the_book_alone(start, end):
    text = real_data.strip_gutenberg(BOOK.format(start=start, end=end))
    assert text == TALE
    assert real_data.paragraphs(text) == ["A TALE", "CHAPTER I", "It was a dark and stormy night.", "CHAPTER II",
                                          "The end."]


def test_strip_gutenberg_without_markers_drops_the_notes_only():
    """tidytext's copies start after the header: only the editors' notes go."""
    book = ("This etext was done by a number of anonymous volunteers of the\nGutenberg Project.\n\n\nA TALE\n\n"
            "Chapter I\n\nThe text of the tale, as it was told.\n")
    assert real_data.strip_gutenberg(book) == "A TALE\n\nChapter I\n\nThe text of the tale, as it was told."


def test_paragraphs_one_line_each():
    text = "Line one\r\nline\u00a0two,\tstill one.\n \t\nSecond\x82 para-\ngraph.\n\n\n\n  Third.  "
    assert real_data.paragraphs(text) == ["Line one line two, still one.", "Second para- graph.", "Third."]


def test_chapters_start_at_the_first_of_a_run_of_headings():
    paras = ["A TALE", "by Some One", "VOLUME I", "CHAPTER I", "Text one.", "Part of it was true.",
             "Chapter I cannot say more than this about the whole of it, as the author said at the very start.",
             "CHAPTER II", "Text two.", "VOLUME II", "CHAPTER I", "Text three."]
    assert real_data.chapters(paras) == [
        "A TALE\n\nby Some One",
        "VOLUME I\n\nCHAPTER I\n\nText one.\n\nPart of it was true.\n\nChapter I cannot say more than this about "
        "the whole of it, as the author said at the very start.",
        "CHAPTER II\n\nText two.", "VOLUME II\n\nCHAPTER I\n\nText three."]


def section_texts(sizes: list[list[int]]) -> list[str]:
    """Sections of paragraphs of the given lengths, each paragraph one letter repeated (no paragraph break inside)."""
    return ["\n\n".join(chr(97 + (i + j) % 26) * n for j, n in enumerate(paras)) for i, paras in enumerate(sizes)]


def most_documents(lengths: list[int], least: int) -> int:
    """Brute force over every way of grouping consecutive sections: the most groups of >= least characters each
    (sections joined by two characters), 0 when there is none."""
    best = {0: 0}  # sections taken -> the most documents they make
    for end in range(1, len(lengths) + 1):
        options = [best[start] + 1 for start in range(end) if start in best and
                   sum(lengths[start:end]) + 2 * (end - start - 1) >= least]
        if options:
            best[end] = max(options)
    return best.get(len(lengths), 0)


@settings(max_examples=200)
@given(st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=4), min_size=1, max_size=12),
       st.integers(1, 200))
def test_cut_makes_the_most_documents_of_whole_chapters(sizes, least):
    sections = section_texts(sizes)
    docs = real_data.cut(sections, least, most=10**6)  # no section is cut inside
    whole = "\n\n".join(sections)
    assert len(docs) == most_documents([len(s) for s in sections], least)
    if docs:
        assert "\n\n".join(docs) == whole and all(len(d) >= least for d in docs)
        starts, at = set(), 0
        for s in sections:
            starts.add(at)
            at += len(s) + 2
        at = 0
        for d in docs:  # every document begins where a section begins
            assert at in starts
            at += len(d) + 2


@settings(max_examples=100)
@given(st.lists(st.lists(st.integers(1, 30), min_size=1, max_size=12), min_size=1, max_size=5),
       st.integers(20, 80))
def test_cut_splits_a_long_section_at_paragraph_breaks(sizes, most):
    """least = 1: every part is a document of its own, so the parts show: each <= most plus one paragraph."""
    sections = section_texts(sizes)
    docs = real_data.cut(sections, 1, most)
    assert "\n\n".join(docs) == "\n\n".join(sections)
    longest = max(n for paras in sizes for n in paras)
    assert all(len(d) <= most + longest + 2 for d in docs)
    assert all(not d.startswith("\n") and not d.endswith("\n") for d in docs)  # cut at breaks, never inside
    for section in sections:
        if len(section) <= most:
            assert section in docs  # a short section stays whole


def test_cut_balances_and_refuses_a_short_work():
    docs = real_data.cut(section_texts([[10]] * 10), 25, 1000)  # greedy: 3 + 3 + 4 sections; balanced: 3 + 4 + 3
    assert [d.count("\n\n") + 1 for d in docs] == [3, 4, 3]
    assert real_data.cut(section_texts([[10], [10]]), 23, 1000) == []


@settings(max_examples=100)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=6))
def test_interleave_spreads_every_work(counts):
    groups = [[(g, k) for k in range(n)] for g, n in enumerate(counts)]
    out = real_data.interleave(groups)
    assert sorted(out) == sorted(x for g in groups for x in g)
    total, bound = len(out), len(counts) / 2 + 1
    for m in range(total + 1):  # any prefix holds each work in about its share
        for g, n in enumerate(counts):
            have = [x for x in out[:m] if x[0] == g]
            assert have == groups[g][:len(have)]
            assert abs(len(have) - m * n / max(total, 1)) <= bound


# ---------------------------------------------------------------- R's XDR serialisation, written plainly

def xdr(*values) -> bytes:
    return b"".join(struct.pack(">i", v) for v in values)


def r_string(s: str | None, latin1: bool = False) -> bytes:
    if s is None:
        return xdr(9, -1)
    raw = s.encode("latin-1" if latin1 else "utf-8")
    return xdr(9 | ((4 if latin1 else 8) << 12), len(raw)) + raw


def r_names(names: list[str], symbol_ref: int | None = None) -> bytes:
    """A pairlist attribute names = c(...): its tag the symbol `names`, or a reference to it when read before."""
    tag = xdr(255 | (symbol_ref << 8)) if symbol_ref else xdr(1) + r_string("names")
    return xdr(2 | 1 << 10) + tag + xdr(16 | 0, len(names)) + b"".join(map(r_string, names)) + xdr(254)


def r_serialise(body: bytes) -> bytes:
    return b"X\n" + xdr(3, 0x040201, 0x030500, 5) + b"UTF-8" + body


def named_list(symbols_before: int = 0) -> bytes:
    """list(s = c(x = "a", y = NA, z = "é" in latin-1), i = c(1L, -7L), d = 0.5): `names` written once, then
    referred to (its index counts the symbols the stream held before)."""
    return (xdr(19 | 1 << 9, 3)
            + xdr(16 | 1 << 9, 3) + r_string("a") + r_string(None) + r_string("é", latin1=True)
            + r_names(["x", "y", "z"])
            + xdr(13, 2, 1, -7) + xdr(14, 1) + struct.pack(">d", 0.5)
            + r_names(["s", "i", "d"], symbol_ref=symbols_before + 1))


def test_unserialize_reads_vectors_attributes_and_symbol_references():
    value = real_data.unserialize(r_serialise(named_list()))
    assert real_data.named(value) == {"s": ["a", None, "é"], "i": [1, -7], "d": [0.5]}
    assert real_data.named(value[0]) == {"x": "a", "y": None, "z": "é"}
    with pytest.raises(ValueError, match="SEXP type 3"):  # a closure: no data file holds one
        real_data.unserialize(r_serialise(xdr(3)))


def test_lazyload_and_rda():
    first, second = r_serialise(xdr(16, 1) + r_string("one")), r_serialise(named_list())
    rdb = struct.pack(">I", len(first)) + zlib.compress(first)  # compress = TRUE: no type byte
    offset = len(rdb)
    rdb += struct.pack(">I", len(second)) + b"X" + lzma.compress(second)  # compress = 3: xz
    index = (xdr(19 | 1 << 9, 3)
             + xdr(19 | 1 << 9, 2) + xdr(13, 2, 0, offset) + xdr(13, 2, offset, len(rdb) - offset)
             + r_names(["first", "second"])
             + xdr(19 | 1 << 9, 0) + r_names([], symbol_ref=1) + xdr(10, 1, 1)
             + r_names(["variables", "references", "compressed"], symbol_ref=1))
    files = {"db.rdx": gzip.compress(r_serialise(index)), "db.rdb": rdb}
    objects = real_data.lazyload(files, "db")
    assert objects["first"] == ["one"] and real_data.named(objects["second"])["i"] == [1, -7]
    rda = bz2.compress(b"RDX3\n" + r_serialise(xdr(2 | 1 << 10, 1) + r_string("books") + named_list(1) + xdr(254)))
    assert real_data.named(real_data.rda(rda)["books"])["d"] == [0.5]


# ---------------------------------------------------------------- SWORD zCom modules and OSIS

@pytest.mark.parametrize("wide", [False, True])
def test_sword_blocks_read_each_entry_once(wide):
    blocks = [b"Hello world", "Psalm 2 \u2014 on".encode()]
    data, index = b"", b""
    for block in blocks:
        packed = zlib.compress(block)
        index += struct.pack("<III", len(data), len(packed), len(block))
        data += packed
    entry = "<III" if wide else "<IIH"
    verses = [(0, 0, 0), (0, 0, 5), (0, 0, 5), (0, 5, 6), (1, 0, len(blocks[1])), (1, 0, len(blocks[1]))]
    ext = "cz" if wide else "bz"
    files = {f"m/ot.{ext}s": index, f"m/ot.{ext}z": data,
             f"m/ot.{ext}v": b"".join(struct.pack(entry, *v) for v in verses)}  # the repeats: linked verses
    assert real_data.sword_blocks(files, "m/ot", wide) == ["Hello world", "Psalm 2 \u2014 on"]


def test_osis_text():
    markup = ('<div type="x-p" sID="a"/>Blessed <hi type="italic">is</hi> the man<div eID="a" type="x-p"/>'
              '<title type="x-s">DIVISION.</title><list><item>One</item><item>Two</item></list><table><row><cell>'
              'The genealogy.</cell><cell>(1-17)</cell></row></table> A &amp; B<note type="x">a note</note>'
              '<lg><l/>Thus with my<l/>thoughts composed</lg><reference osisRef="Ps.4.8">Ps 4:8</reference>')
    assert real_data.paragraphs(real_data.osis_text(markup)) == [
        "Blessed is the man", "DIVISION.", "One", "Two", "The genealogy. (1-17)", "A & B",
        "Thus with my thoughts composed", "Ps 4:8"]


# ---------------------------------------------------------------- .deb files and apt-get

def ar_member(name: str, data: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    return header + data + b"\n" * (len(data) % 2)


def test_deb_files_reads_the_data_tar(tmp_path):
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w:xz") as t:
        for name, data in (("./usr/share/x/a.txt", b"alpha"), ("./usr/share/y/b.txt", b"beta")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    deb = tmp_path / "p.deb"
    deb.write_bytes(b"!<arch>\n" + ar_member("debian-binary", b"2.0\n") + ar_member("control.tar.xz", b"odd")
                    + ar_member("data.tar.xz", tar.getvalue()))
    assert real_data.deb_files(deb, "./usr/share/x") == {"./usr/share/x/a.txt": b"alpha"}
    (tmp_path / "q.deb").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not a .deb"):
        real_data.deb_files(tmp_path / "q.deb", "./")


@pytest.fixture
def apt_get(tmp_path, monkeypatch):
    """A stand-in apt-get on PATH: `download NAME=VERSION` writes NAME_VERSION_all.deb holding $PAYLOAD (or fails
    as apt-get does when $FAIL is set), and logs its arguments."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    script = bin_ / "apt-get"
    script.write_text('#!/bin/sh\necho "$@" >> "$LOG"\nif [ -n "$FAIL" ]; then echo "E: Unable to locate package" '
                      '>&2; exit 100; fi\nspec="$2"; printf "%s" "$PAYLOAD" > "${spec%%=*}_${spec#*=}_all.deb"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LOG", str(tmp_path / "log"))
    monkeypatch.setenv("PAYLOAD", "payload")
    return tmp_path / "log"


def test_fetch_checks_the_pinned_sha256(apt_get, tmp_path, monkeypatch):
    good = real_data.Package("pkg", "1.0", "all", hashlib.sha256(b"payload").hexdigest(), 7, "MIT")
    downloads = tmp_path / "debs"
    path = real_data.fetch(good, downloads)
    assert path.read_bytes() == b"payload" and apt_get.read_text() == "download pkg=1.0\n"
    assert real_data.fetch(good, downloads) == path and apt_get.read_text() == "download pkg=1.0\n"  # cached
    bad = real_data.Package("other", "2.0", "all", "0" * 64, 7, "MIT")
    with pytest.raises(RuntimeError, match="sha256 .* is not the pinned 0000"):
        real_data.fetch(bad, downloads)
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(RuntimeError, match="E: Unable to locate package"):
        real_data.fetch(real_data.Package("gone", "1", "all", "0" * 64, 1, "MIT"), downloads)
    assert sorted(p.name for p in downloads.iterdir()) == ["pkg_1.0_all.deb"]  # nothing else left behind


def test_verified_needs_every_file_and_the_same_settings(tmp_path):
    settings_ = {"script": "abc", "packages": {}, "tokenizer": None}
    blobs = {o.name: b"{}\n" for o in real_data.OUTPUTS}
    blobs.update({"SOURCES.md": b"# s\n", "settings.json": json.dumps(settings_).encode()})
    for name, blob in blobs.items():
        (tmp_path / name).write_bytes(blob)
    (tmp_path / "SHA256SUMS").write_text("".join(f"{hashlib.sha256(b).hexdigest()}  {n}\n" for n, b in blobs.items()))
    assert real_data.verified(tmp_path, settings_)
    assert not real_data.verified(tmp_path, dict(settings_, tokenizer={"path": "t"}))
    (tmp_path / "heldout.jsonl").write_bytes(b"[]\n")
    assert not real_data.verified(tmp_path, settings_)


@pytest.mark.parametrize("argv, message", [
    (["--tokenizer", "/nonexistent/tokenizer.json"], "--tokenizer /nonexistent/tokenizer.json"),
    (["--out", "FILE"], "--out"),
    (["--downloads", "FILE"], "--downloads"),
    (["--stride", "3"], "unrecognized arguments: --stride 3"),
])
def test_bad_flags_one_line_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "FILE").write_text("")
    argv = [str(tmp_path / a) if a == "FILE" else a for a in argv]
    with pytest.raises(SystemExit) as exit_:
        real_data.main(argv + ["--out", str(tmp_path / "out")] * ("--out" not in argv))
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()
