"""Tokenizers and corpus readers for train.py and evaluate.py, and a CLI that pre-tokenises a corpus once.

    python data.py --data pile/ --tokenizer ./Llama-2-7b-hf --out pile.npy --workers 16
    python data.py --data 'fineweb/*.parquet' --tokenizer ./Meta-Llama-3-8B --out fineweb.npy --max-documents 200000
    torchrun --nproc_per_node 8 train.py --model ./Llama-2-7b-hf --data pile.npy --target 16384  # memory-mapped
    python -m pytest tests/test_data.py -x -q

The output is the 1-D id file train.py and evaluate.py memory-map: every document as BOS ... EOS, exactly what
their text path tokenises (uint16 when the vocabulary fits, else uint32), written by --workers processes in file
order under a temporary name renamed into place at the end (a failure, a signal or a full disk leaves nothing).

Read top to bottom: Tokenizer (tokenizer.model with sentencepiece, tokenizer.json with `tokenizers`; BOS / EOS
follow the tokenizer's own convention, never config.json's ids alone), the corpus readers (.jsonl[.gz|.zst],
.parquet, .txt / .md / .rst / .tex / .py files, pre-tokenised .npy / .bin; folders and globs; rank r of w keeps
documents r, r + w, ...), then the pre-tokenising CLI. docs/data.md: the BOS / EOS rules in full, how reading
streams and stops, short documents here and in the authors' code.
"""
import argparse
import dataclasses
import errno
import glob
import gzip
import importlib
import io
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import sys
import sysconfig
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("POSE_CACHE", Path(__file__).resolve().parent / ".cache"))
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".tex", ".py")  # one document per file
TOKEN_SUFFIXES = (".npy", ".bin")
SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet") + TEXT_SUFFIXES + TOKEN_SUFFIXES
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# The rest of what transformers reads for a tokenizer from its folder (5.25's source: tokenization_utils_base's
# added_tokens.json and chat_template.jinja, hub.py's legacy chat_template.json and additional_chat_templates/*.jinja,
# the last two since 4.5x; the vocabulary files of the families model.py reads: vocab.json + merges.txt for Qwen's
# and OLMo 2's byte-level BPE, tekken.json for Mistral's newer ones). generation_config.json is the model's
# (write_hf_folder copies --model's). An export copies every one the tokenizer's folder has (tokenizer_files).
VOCABULARIES = ("vocab.json", "merges.txt", "tekken.json")
TOKENIZER_SIDE = ("added_tokens.json", "chat_template.jinja", "chat_template.json")
CHAT_TEMPLATES = "additional_chat_templates"  # a folder of named templates, each NAME.jinja


def optional(module: str, package: str, user: str):
    """Import an optional dependency, or one line naming the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"{user} needs the {package} package, which is not installed (pip install {package})") \
            from None


# ---------------------------------------------------------------- tokenizers

class Tokenizer:
    """tokenizer.model (sentencepiece) or tokenizer.json (Hugging Face tokenizers) behind one interface:
    encode(text, bos, eos) -> ids, decode(ids), bos_id (None: the model uses none), eos_id, vocab_size."""

    def __init__(self, path):
        path = Path(path)
        if path.is_dir():
            found = [path / name for name in TOKENIZER_FILES[:2] if (path / name).is_file()]
            if not found:
                raise FileNotFoundError(f"{path}: no tokenizer.model (sentencepiece) or tokenizer.json "
                                        f"(Hugging Face tokenizers)")
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer not found")
        self.path, self.sp, self.hf = path, None, None
        if path.suffix == ".json":
            tokenizers = optional("tokenizers", "tokenizers", f"{path}")
            try:
                self.hf = tokenizers.Tokenizer.from_file(str(path))
            except Exception as e:  # the Rust side raises a bare Exception on a malformed file
                raise ValueError(f"{path}: not a tokenizer.json ({str(e).splitlines()[0]})") from None
            self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
            own = (None, None)  # a tokenizer.json names no BOS/EOS of its own: the configs beside it do
        else:
            import sentencepiece as spm
            self.sp = spm.SentencePieceProcessor()
            try:
                self.sp.Load(str(path))
            except (OSError, RuntimeError) as e:
                raise ValueError(f"{path}: not a sentencepiece model ({str(e).splitlines()[0]})") from None
            self.vocab_size = self.sp.vocab_size()
            own = tuple(i if i >= 0 else None for i in (self.sp.bos_id(), self.sp.eos_id()))
        self.bos_id, self.eos_id = (self._special(name, default) for name, default in zip(("bos", "eos"), own))

    def _special(self, name: str, default: int | None) -> int | None:
        """The checkpoint's BOS or EOS id (the module docstring's rules)."""
        settings = _read_json(self.path.parent / "tokenizer_config.json")
        if name == "bos" and settings.get("add_bos_token") is False:
            return None
        added = self._post_processor_bos() if self.hf and name == "bos" else None
        if f"{name}_token" in settings:
            token = settings[f"{name}_token"]
            token = token.get("content") if isinstance(token, dict) else token  # an AddedToken, serialised
            add_bos = settings.get("add_bos_token")
            if token is not None and not isinstance(token, str) or add_bos not in (None, True, False):
                raise ValueError(f"{self.path.parent / 'tokenizer_config.json'}: {name}_token must be a string, an "
                                 f"AddedToken object or null and add_bos_token true or false, got "
                                 f"{settings[name + '_token']!r} and {add_bos!r}")
            if token is None:
                return None
            if self.hf and name == "bos" and settings.get("add_bos_token") is not True:
                return added  # what the fast tokenizer adds: its tokenizer.json's post-processor decides
            id_ = self.hf.token_to_id(token) if self.hf else self.sp.piece_to_id(token)
            if id_ is None or self.sp and self.sp.id_to_piece(id_) != token:  # sentencepiece answers unk
                raise ValueError(f"{self.path.parent / 'tokenizer_config.json'}: {name}_token {token!r} is not in "
                                 f"{self.path.name}")
            return id_
        if name == "bos":  # never config.json's bos_token_id alone
            return added if self.hf else default
        config = _read_json(self.path.parent / "config.json")
        value = config.get(f"{name}_token_id", default)
        value = value[0] if isinstance(value, list) and value else value
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{self.path.parent / 'config.json'}: {name}_token_id must be a token id >= 0, a list "
                             f"of them or null, got {config[name + '_token_id']!r}")
        return value

    def _post_processor_bos(self) -> int | None:
        """The id tokenizer.json's post-processor puts before a single text (TemplateProcessing's leading special
        token, Roberta/Bert's cls), or None when it adds none (Qwen's ByteLevel, or no post-processor)."""
        stack = [_read_json(self.path).get("post_processor") or {}]
        while stack:
            proc = stack.pop(0)
            if proc.get("type") == "Sequence":
                stack = list(proc.get("processors") or []) + stack
            elif proc.get("type") == "TemplateProcessing":
                first = (proc.get("single") or [{}])[0]
                if "SpecialToken" not in first:
                    return None
                return proc["special_tokens"][first["SpecialToken"]["id"]]["ids"][0]
            elif proc.get("type") in ("RobertaProcessing", "BertProcessing"):
                return proc["cls"][1]
        return None

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """The ids of text, without the tokenizer's own special tokens, with our BOS / EOS around them."""
        ids = self.sp.encode(text) if self.sp else self.hf.encode(text, add_special_tokens=False).ids
        if eos and self.eos_id is None:
            raise ValueError(f"{self.path}: no EOS token (tokenizer_config.json eos_token, config.json eos_token_id)")
        return [self.bos_id] * (bos and self.bos_id is not None) + ids + [self.eos_id] * eos

    def decode(self, ids) -> str:
        # A model's vocab may be padded past the tokenizer's (e.g. to a multiple of 64): such ids have no text.
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self.sp.decode(ids) if self.sp else self.hf.decode(ids)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return value if isinstance(value, dict) else {}


def check_vocabulary(tokenizer: Tokenizer, vocab_size: int):
    """A tokenizer with ids the model cannot embed (another checkpoint's tokenizer): one line before any work."""
    top = max(tokenizer.vocab_size - 1, tokenizer.bos_id or 0, tokenizer.eos_id or 0)
    if top >= vocab_size:
        raise ValueError(f"{tokenizer.path}: ids up to {top} (BOS {tokenizer.bos_id}, EOS {tokenizer.eos_id}, "
                         f"{tokenizer.vocab_size:,} tokens) but the model's vocab_size is {vocab_size:,}")


def tokenizer_files(path) -> dict[str, Path]:
    """{name in an exported checkpoint: source file} for the tokenizer at path. A folder: every tokenizer file it
    has (TOKENIZER_FILES, VOCABULARIES, TOKENIZER_SIDE, additional_chat_templates/*.jinja: an Instruct model's chat
    template included). A file (--tokenizer X/tokenizer.json): that file, under its usual name, and the configs and
    chat templates beside it, not the other vocabulary files there (the one given is the one trained with)."""
    if path is None:
        return {}
    path = Path(path)
    folder, files = (path, {}) if path.is_dir() else (path.parent, {
        "tokenizer.json" if path.suffix == ".json" else "tokenizer.model": path})
    names = TOKENIZER_FILES + VOCABULARIES if path.is_dir() else TOKENIZER_FILES[2:]
    files |= {name: folder / name for name in names + TOKENIZER_SIDE if (folder / name).is_file()}
    templates = sorted(t for t in (folder / CHAT_TEMPLATES).glob("*.jinja") if t.is_file())
    return files | {f"{CHAT_TEMPLATES}/{t.name}": t for t in templates}


def default_texts(split="train", max_bytes=3_000_000) -> list[str]:
    """The embedded corpus: .py files of Python's standard library (no tests), in path order, every 10th one held
    out as split="eval"; capped at max_bytes of text so tokenising stays a second or two."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not {"site-packages", "test", "tests", "idle_test"} & set(p.parts))
    texts, size = [], 0
    for i, file in enumerate(files):
        if (i % 10 == 0) == (split == "eval") and size < max_bytes:
            texts.append(file.read_text(encoding="utf-8", errors="replace")[:50_000])  # a few huge files stay a few
            size += len(texts[-1])
    return texts


def default_tokenizer(vocab_size=4096) -> Path:
    """A sentencepiece BPE trained on a sample of the stdlib corpus at first use, cached atomically under .cache/."""
    path = CACHE / f"stdlib-py{sys.version_info[0]}.{sys.version_info[1]}-bpe{vocab_size}.model"
    if not path.exists():
        import sentencepiece as spm
        lines = [line for text in default_texts()[::3] for line in text.splitlines() if line.strip()][:60_000]
        proto = io.BytesIO()
        spm.SentencePieceTrainer.train(  # LLaMA's settings: unk 0, bos 1, eos 2; bytes for anything unseen
            sentence_iterator=iter(lines), model_writer=proto, vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(proto.getvalue())
        os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- corpora

def kind(path: Path) -> str | None:
    """The reader for a file, by its ending (".jsonl.gz", ".parquet", ...), or None for anything else."""
    return next((suffix for suffix in SUFFIXES if path.name.lower().endswith(suffix)), None)


def as_list(sources) -> list:
    """--data as given: one path (str or Path) or a list of them."""
    return [sources] if isinstance(sources, (str, Path)) else list(sources)


def find_files(sources, flag: str = "--data", say=None) -> list[Path]:
    """The files of --data: each source (one or a list) a file, a folder (every readable file below it, sorted)
    or a glob (its sorted matches, folders expanded). Raises one line naming a source with nothing to read.
    Each file is read once: a path whose real file (symlinks resolved) is already listed is dropped, and
    say(line) tells how many were (a file given twice, a symlink beside its target, a symlinked folder loop)."""
    files, real, dropped = [], set(), 0
    for source in map(str, as_list(sources)):
        path = Path(source)
        if path.is_file():
            if kind(path) is None:
                raise ValueError(f"{flag} {path}: unsupported file type (readable: {' '.join(SUFFIXES)})")
            found = [path]
        elif path.is_dir() or any(c in source for c in "*?["):
            matches = [path] if path.is_dir() else [Path(p) for p in glob.glob(source, recursive=True)]
            found = sorted({f for m in matches for f in (m.rglob("*") if m.is_dir() else [m])
                            if f.is_file() and kind(f) and not f.name.startswith(".")})  # not our .tmp files
            if not found:
                raise ValueError(f"{flag} {source}: no readable file ({' '.join(SUFFIXES)})")
        else:
            raise FileNotFoundError(f"{flag} {source}: not found")
        for f in found:
            target = f.resolve()  # the real file, once
            dropped += target in real
            if target not in real:
                real.add(target)
                files.append(f)
    if dropped and say is not None:
        say(f"{flag}: {dropped} path{'s' * (dropped > 1)} dropped, each a file already listed (given twice, or "
            f"reached again through a symlink)")
    return files


def describe(files: list[Path]) -> str:
    """'3 files, 12.4 MB on disk: a.parquet .. c.parquet' for the first line of a log."""
    size = sum(f.stat().st_size for f in files)
    names = str(files[0]) if len(files) == 1 else f"{files[0]} .. {files[-1]}"
    return f"{len(files)} file{'s' * (len(files) > 1)}, {size / 1e6:,.1f} MB on disk: {names}"


def needs_tokenizer(files) -> bool:
    return files is None or any(kind(f) not in TOKEN_SUFFIXES for f in files)


def token_array(path: Path) -> np.ndarray:
    """The ids of a pre-tokenised file, memory-mapped once its layout is checked, else one line naming the file
    and its size. A .npy's header is read by numpy's header parser (a Python literal; np.load is not used, so no
    pickle is ever unpickled, whatever allow_pickle would say): an integer dtype, one dimension, and the file long
    enough for them (not an .npz, an object array, a truncated file). A .bin holds whole uint16 ids."""
    size = path.stat().st_size
    where = f"--data {path} ({size:,} bytes)"
    if kind(path) == ".bin":
        if size % 2:
            raise ValueError(f"{where}: not a whole number of uint16 token ids (a .bin is nanoGPT's raw uint16)")
        return np.memmap(path, dtype=np.uint16, mode="r") if size else np.zeros(0, np.uint16)  # mmap needs a byte
    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0)):  # np.save writes 1.0, 2.0 for huge headers, 3.0 for text fields
                raise ValueError(f".npy format version {version[0]}.{version[1]}, not an array of token ids")
            shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
        except ValueError as e:  # no magic string (an .npz, a pickle, text), a header that is no literal
            raise ValueError(f"{where}: not a NumPy .npy array ({str(e).splitlines()[0]})") from None
        offset = f.tell()
    if len(shape) != 1 or not np.issubdtype(dtype, np.integer):  # object, float, bool, structured; 0-D, 2-D
        raise ValueError(f"--data {path}: expected a 1-D array of integer token ids, got {dtype} {shape}")
    needed = offset + shape[0] * dtype.itemsize
    if size < needed:
        raise ValueError(f"{where}: truncated, its header declares {shape[0]:,} {dtype} ids ({needed:,} bytes)")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape) if shape[0] else np.zeros(0, dtype)


def read_token_file(path, eos_id: int | list[int]):
    """Yield the documents of a pre-tokenised 1-D .npy / uint16 .bin file as memory-mapped views; each ends with
    (and includes) its EOS. One vectorised pass finds the ends; no token is copied."""
    ids = token_array(Path(path))
    ends = np.flatnonzero(np.isin(ids, eos_id)) + 1  # eos_id: an id, or a list (Llama 3 Instruct configs)
    for a, b in zip(np.r_[0, ends], np.r_[ends, len(ids)]):
        if b > a:
            yield ids[a:b]


def _jsonl(path: Path, text_field: str, mine):
    if kind(path) == ".jsonl.gz":
        stream = gzip.open(path, "rt", encoding="utf-8", errors="replace")
    elif kind(path) == ".jsonl.zst":
        zstd = optional("zstandard", "zstandard", f"--data {path}")
        raw = zstd.ZstdDecompressor(max_window_size=2**31).stream_reader(open(path, "rb"), read_across_frames=True)
        stream = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")  # closing it closes the file
    else:
        stream = open(path, encoding="utf-8", errors="replace")
    with stream:
        for lineno, line in enumerate(stream, 1):
            if line.strip() and mine():
                try:
                    text = json.loads(line)[text_field]
                    assert isinstance(text, str)
                except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
                    raise ValueError(f"{path}:{lineno}: not a JSON object with a text {text_field!r} field (pass "
                                     f"--text-field)") from None
                yield text


def _parquet(path: Path, text_field: str, mine):
    pq = optional("pyarrow.parquet", "pyarrow", f"--data {path}")
    file = pq.ParquetFile(path)
    if text_field not in file.schema_arrow.names:
        raise ValueError(f"--data {path}: no column {text_field!r} (columns: {', '.join(file.schema_arrow.names)}); "
                         f"name the text column with --text-field")
    for batch in file.iter_batches(batch_size=1024, columns=[text_field]):  # one row group at a time
        for text in batch.column(0).to_pylist():
            if mine():
                if not isinstance(text, str):
                    raise ValueError(f"--data {path}: column {text_field!r} holds {type(text).__name__}, not text")
                yield text


def _corrupt() -> tuple:
    """What a damaged file raises while it is read: gzip / zlib, and zstandard's and pyarrow's errors once loaded."""
    loaded = [sys.modules.get("zstandard"), sys.modules.get("pyarrow")]
    return (OSError, EOFError, zlib.error, *(getattr(m, n) for m, n in zip(loaded, ("ZstdError", "ArrowException"))
                                               if m is not None))


def read_records(files, text_field="text", eos_id=2, rank=0, world_size=1):
    """Yield this rank's documents of `files` in order (documents rank, rank + world_size, ... counted over all
    files): a str for text, an int array (EOS included) for a token file. The others are skipped unparsed."""
    counter = itertools.count()

    def mine() -> bool:
        return next(counter) % world_size == rank

    for path in map(Path, files):
        suffix = kind(path)
        try:
            if suffix in TOKEN_SUFFIXES:
                yield from (doc for doc in read_token_file(path, eos_id) if mine())
            elif suffix == ".parquet":
                yield from _parquet(path, text_field, mine)
            elif suffix in TEXT_SUFFIXES:
                if mine():
                    yield path.read_text(encoding="utf-8", errors="replace")
            else:
                yield from _jsonl(path, text_field, mine)
        except _corrupt() as e:
            raise ValueError(f"--data {path}: unreadable, corrupt or truncated ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None


class Meter:
    """Documents, tokens and MB/s of text read so far, on stderr every `every` seconds (so silent on quick reads)."""

    def __init__(self, every: float = 5.0, name: str = "data"):
        self.every, self.name, self.docs, self.tokens, self.bytes = every, name, 0, 0, 0
        self.start = self.last = time.perf_counter()

    def __call__(self, docs: int, tokens: int, nbytes: int):
        self.docs, self.tokens, self.bytes = self.docs + docs, self.tokens + tokens, self.bytes + nbytes
        if time.perf_counter() - self.last >= self.every:
            self.last = time.perf_counter()
            print(f"{self.name}: {self}", file=sys.stderr, flush=True)

    def seconds(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    def __str__(self):
        return (f"{self.docs:,} documents, {self.tokens:,} tokens, {self.bytes / 1e6:,.1f} MB of text in "
                f"{self.seconds():.1f}s ({self.bytes / 1e6 / self.seconds():.2f} MB/s)")


def iter_documents(sources, tokenizer=None, text_field="text", rank=0, world_size=1, eos_id=2, split="train",
                   every=5.0):
    """This rank's documents of `sources` (see find_files; None: the embedded stdlib corpus, split "train" or
    "eval") as int arrays, text tokenised with BOS and EOS (int32), token files as their memory-mapped views."""
    files = None if sources is None else find_files(sources)
    if tokenizer is None and needs_tokenizer(files):
        text = next((f for f in files or [] if kind(f) not in TOKEN_SUFFIXES), "stdlib")
        raise ValueError(f"--data {text} is text: it needs a tokenizer (tokenizer.model or tokenizer.json) or "
                         f"pre-tokenised .npy")
    if files is None:
        records = (t for i, t in enumerate(default_texts(split)) if i % world_size == rank)
    else:
        records = read_records(files, text_field, eos_id, rank, world_size)
    meter = Meter(every)
    for record in records:
        nbytes = 0
        if isinstance(record, str):
            nbytes = len(record.encode("utf-8"))
            record = np.asarray(tokenizer.encode(record, bos=True, eos=True), dtype=np.int32)
        meter(1, len(record), nbytes)
        yield record


def read_documents(sources, tokenizer=None, text_field="text", min_len=1, rank=0, world_size=1, max_documents=None,
                   eos_id=2, split="train", every=5.0):
    """This rank's first max_documents documents of >= min_len tokens (see iter_documents); reading stops once
    they are in. Returns (documents, n_skipped_too_short)."""
    documents, skipped = [], 0
    for doc in iter_documents(sources, tokenizer, text_field, rank, world_size, eos_id, split, every):
        if len(doc) >= min_len:
            documents.append(doc)
            if max_documents and len(documents) >= max_documents:
                break
        else:
            skipped += 1  # §4.1 keeps documents >= L_c tokens only
    return documents, skipped


# ---------------------------------------------------------------- pre-tokenising CLI

@dataclass
class DataOptions:
    """Every flag of data.py."""
    data: list[str] = field(metadata=dict(nargs="+", help="files, folders or globs (see the docstring)"))
    tokenizer: str = field(metadata=dict(help="checkpoint folder, tokenizer.model or tokenizer.json"))
    out: str = field(metadata=dict(help="the .npy id file to write"))
    workers: int = field(default=os.cpu_count() or 1, metadata=dict(type=int, help="tokenising processes"))
    text_field: str = field(default="text", metadata=dict(help="the .jsonl field / parquet column of the text"))
    max_documents: int | None = field(default=None, metadata=dict(type=int, help="stop after this many"))


HEADER = 128  # bytes of the .npy header (format 1.0, padded to 64): any 1-D shape up to 20 digits fits


BATCH_CHARS = 1 << 18  # characters of text per batch, the unit of work a process tokenises


def _batches(texts):
    """Lists of documents of about BATCH_CHARS characters: the unit of work a process tokenises."""
    max_chars, batch, chars = BATCH_CHARS, [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


_worker_tokenizer = None  # each worker process loads its own, once


def _start_worker(path):
    global _worker_tokenizer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    if sys.platform == "linux":  # PR_SET_PDEATHSIG: a parent killed outright (SIGKILL) takes its workers along
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    _worker_tokenizer = Tokenizer(path)


def _encode_batch(texts, dtype, tokenizer=None) -> np.ndarray:
    """The concatenated BOS ... EOS ids of a batch of documents, as train.py's text path tokenises each."""
    tokenizer = tokenizer or _worker_tokenizer
    ids = itertools.chain.from_iterable(tokenizer.encode(t, bos=True, eos=True) for t in texts)
    return np.fromiter(ids, dtype=dtype)


def _encoded(batches, tokenizer: Tokenizer, workers: int, dtype, say=print):
    """Yield (documents, bytes of text, ids) per batch, in order. workers > 1: spawned processes (no fork of a
    parent's threads), at most two batches each in flight, so memory stays bounded however large the corpus;
    never more processes than batches (the first `workers` batches are read before any starts)."""
    batches = iter(batches)
    first = list(itertools.islice(batches, workers))
    if len(first) < workers:
        say(f"--workers {workers} capped at {max(len(first), 1)}: the corpus has {len(first)} batches of work")
        workers = max(len(first), 1)
    batches = itertools.chain(first, batches)
    if workers == 1:
        for texts in batches:
            yield len(texts), sum(len(t.encode("utf-8")) for t in texts), _encode_batch(texts, dtype, tokenizer)
        return
    # Leaving the with block by an exception (a bad record, a signal: see pretokenise) terminates the workers.
    with multiprocessing.get_context("spawn").Pool(workers, _start_worker, (tokenizer.path,)) as pool:
        pending = deque()
        for texts in batches:
            job = pool.apply_async(_encode_batch, (texts, dtype))
            pending.append((len(texts), sum(len(t.encode("utf-8")) for t in texts), job))
            if len(pending) >= 2 * workers:
                docs, nbytes, job = pending.popleft()
                yield docs, nbytes, job.get()
        while pending:
            docs, nbytes, job = pending.popleft()
            yield docs, nbytes, job.get()


class Stopped(Exception):
    """SIGINT / SIGTERM during pretokenise(): the temporary file is removed and the workers stopped."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def check_out(out: Path, flag: str = "--out", create: bool = False):
    """Refuse an output file we could not write, before the work starts: an existing folder there, a parent
    folder that is missing (create: its nearest existing ancestor, where the missing folders would be made),
    not a folder, or not writable."""
    if out.is_dir():
        raise ValueError(f"{flag} {out}: is a folder (give the file to write)")
    parent = out.absolute().parent
    while create and not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {out}: folder {parent} does not exist" if not parent.exists() else
                         f"{flag} {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out}: folder {parent} is not writable")


def pretokenise(opts: DataOptions, every: float = 5.0) -> dict:
    """Write opts.out, the 1-D ids of every document of opts.data (BOS ... EOS), atomically. Returns the counts.
    SIGINT / SIGTERM stop it: the workers end, the temporary file is removed, Stopped is raised."""
    out = Path(opts.out)
    if out.suffix != ".npy":
        raise ValueError(f"--out {out}: must end in .npy (the 1-D id file train.py memory-maps)")
    check_out(out)
    if opts.workers < 1 or (opts.max_documents is not None and opts.max_documents < 1):
        raise ValueError(f"--workers {opts.workers} and --max-documents {opts.max_documents} must be >= 1")
    files = find_files(opts.data, say=print)
    tokens = [f for f in files if kind(f) in TOKEN_SUFFIXES]
    if tokens:
        raise ValueError(f"--data {tokens[0]}: already token ids (pre-tokenise text files only)")
    tokenizer = Tokenizer(opts.tokenizer)
    if tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer.path}: no EOS token (tokenizer_config.json eos_token, config.json eos_token_id)")
    workers, cpus = opts.workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if workers > (cpus or 1):  # more processes than CPUs only cost memory (each holds a tokenizer)
        print(f"--workers {workers} capped at {cpus or 1}, the CPUs this process may use", flush=True)
        workers = cpus or 1
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)
    print(f"data: {describe(files)}; tokenizer {tokenizer.path} (vocab {tokenizer.vocab_size:,}, "
          f"BOS {tokenizer.bos_id}, EOS {tokenizer.eos_id}); --workers {workers}", flush=True)
    texts = itertools.islice(read_records(files, opts.text_field), opts.max_documents)
    meter, tmp = Meter(every), out.with_name(f".tmp{os.getpid()}-{out.name}")
    previous = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open(tmp, "wb") as f:
            f.write(bytes(HEADER))  # the header needs the final length: written last, in place
            for docs, nbytes, ids in _encoded(_batches(texts), tokenizer, workers, dtype):
                f.write(ids.tobytes())
                meter(docs, len(ids), nbytes)
            n = (f.tell() - HEADER) // dtype.itemsize
            f.seek(0)
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                     "fortran_order": False, "shape": (n,)})
            assert f.tell() == HEADER, f.tell()
        os.replace(tmp, out)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        raise ValueError(f"--out {out}: no space left on device after {written / 2**20:,.1f} MiB of ids "
                         f"({meter.docs:,} documents; {shutil.disk_usage(out.parent).free / 2**20:,.1f} MiB free); "
                         f"the temporary file is removed") from None
    finally:
        tmp.unlink(missing_ok=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"wrote {out} ({dtype}): {meter}, --workers {workers}")
    return dict(documents=meter.docs, tokens=meter.tokens, bytes=meter.bytes, seconds=meter.seconds())


def parse_args(argv=None) -> DataOptions:
    """The dataclass fields are the flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: fail(message)  # one line on stderr, exit 2, like every other bad input
    for f in dataclasses.fields(DataOptions):
        required = f.default is dataclasses.MISSING
        parser.add_argument("--" + f.name.replace("_", "-"), required=required,
                            default=None if required else f.default, **f.metadata)
    return DataOptions(**vars(parser.parse_args(argv)))


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    opts = parse_args(argv)
    try:
        return pretokenise(opts)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e).splitlines()[0])
    except Stopped as e:
        print(f"stopped by {signal.Signals(e.signum).name}: workers ended, nothing written to {opts.out}",
              file=sys.stderr)
        sys.exit(128 + e.signum)


if __name__ == "__main__":
    main()
