"""data.py: both tokenizer kinds, every corpus format, the failure lines, the pre-tokenising CLI, and a
tokenizer.json-only checkpoint through train.py and evaluate.py.

    python -m pytest tests/test_data.py -x -q

Every file is made in the test: a byte-level BPE trained with the `tokenizers` library on Llama 3's pre-tokenizer
split (no download), a small sentencepiece model, corpora of a few KB in every format, and a micro LLaMA written
with model.save_pretrained, so the file takes well under a minute on two CPU cores.
"""
import gzip
import io
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

import data
import evaluate
import distributed
import options
import train
from hf import PRESETS, args_from_config, save_pretrained
from model import Transformer

# Llama 3's tokenizer.json: this Split (GPT-4's regex) then ByteLevel without its own regex; BOS by TemplateProcessing.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
WORDS = ("the model reads long documents and we'll see whether it's able to keep 12345 positions apart; "
         "naïve café résumé 中文 ☃ — tabs\tand\nnew lines, DON'T shout 3.14159").split(" ")
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
MICRO = dict(PRESETS["tiny"], hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, intermediate_size=128, max_position_embeddings=16)


def texts(n, seed=0, words=(5, 60)):
    """n deterministic documents of word salad with digits, contractions, non-ASCII and white space."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(*words))) for _ in range(n)]


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    """A tokenizer.json-only checkpoint in Llama 3's layout: byte-level BPE, specials after the merges, a
    post-processor that adds BOS, BOS/EOS named in tokenizer_config.json and config.json, a micro LLaMA."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    corpus = texts(300) + [evaluate.TASK, " ".join(evaluate.FILLER), evaluate.QUESTION] * 30
    hf.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel
                                                       .alphabet(), show_progress=False))
    hf.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    bos, eos = hf.token_to_id("<|begin_of_text|>"), hf.token_to_id("<|end_of_text|>")
    hf.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    path = tmp_path_factory.mktemp("llama3") / "model"
    model = Transformer(args_from_config(dict(MICRO, vocab_size=hf.get_vocab_size(), bos_token_id=bos,
                                                   eos_token_id=eos)))
    model.init_weights(seed=0)
    save_pretrained(model, path)
    hf.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>",
                                                            "eos_token": "<|end_of_text|>"}))
    return path


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece as spm
    path = tmp_path_factory.mktemp("spm")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts(200)), model_writer=proto, vocab_size=400,
                                   model_type="bpe", byte_fallback=True, minloglevel=2)
    (path / "tokenizer.model").write_bytes(proto.getvalue())
    return path


class CharTokenizer:
    """Stand-in with data.Tokenizer's encode(): one id per character, so lengths are known exactly."""
    bos_id, eos_id = 1, 2

    def encode(self, text, bos=True, eos=False):
        return [1] * bos + [3 + ord(c) % 200 for c in text] + [2] * eos


# ---------------------------------------------------------------- tokenizers

def test_tokenizer_json_encodes_as_the_library_does_without_specials_and_adds_bos_exactly_once(llama3):
    hf = HFTokenizer.from_file(str(llama3 / "tokenizer.json"))
    tok = data.Tokenizer(llama3)
    bos, eos = hf.token_to_id("<|begin_of_text|>"), hf.token_to_id("<|end_of_text|>")
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (bos, eos, hf.get_vocab_size())
    for text in texts(20, seed=1) + ["", " leading space", "x\n\n\ny", "we'll 1234567 ☃☃"]:
        plain = hf.encode(text, add_special_tokens=False).ids
        assert hf.encode(text).ids == [bos] + plain  # the post-processor does add a BOS of its own ...
        ids = tok.encode(text, bos=True, eos=True)
        assert ids == [bos] + plain + [eos] and ids.count(bos) == 1  # ... which ours never doubles
        assert tok.encode(text, bos=False) == plain and tok.decode(ids) == text


def test_sentencepiece_round_trips_and_a_folder_without_either_file_names_both(spm_model, tmp_path):
    tok = data.Tokenizer(spm_model)  # the folder; finds tokenizer.model
    ids = tok.encode("the model reads", bos=True, eos=True)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 400) and ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids) == "the model reads" and tok.encode("the", bos=False)[0] != 1
    with pytest.raises(FileNotFoundError, match="no tokenizer.model .* or tokenizer.json"):
        data.Tokenizer(tmp_path)


def test_bos_and_eos_come_from_tokenizer_config_then_config_json_then_the_file(llama3, spm_model, tmp_path):
    def folder(name, tokenizer_config=None, config=None, source=llama3 / "tokenizer.json"):
        path = tmp_path / name
        path.mkdir()
        (path / source.name).write_bytes(source.read_bytes())
        for file, content in (("tokenizer_config.json", tokenizer_config), ("config.json", config)):
            if content is not None:
                (path / file).write_text(json.dumps(content))
        return data.Tokenizer(path)

    hf = HFTokenizer.from_file(str(llama3 / "tokenizer.json"))
    bos, eos = hf.token_to_id("<|begin_of_text|>"), hf.token_to_id("<|end_of_text|>")
    instruct = folder("instruct", {"bos_token": {"content": "<|begin_of_text|>"}, "eos_token": "<|end_of_text|>"},
                      {"bos_token_id": 7, "eos_token_id": [9, eos]})  # tokenizer_config.json wins
    assert (instruct.bos_id, instruct.eos_id) == (bos, eos)
    # BOS: what the post-processor adds, never config.json's bos_token_id; EOS: config.json's (a list: its first).
    config_only = folder("config-only", None, {"bos_token_id": 5, "eos_token_id": [6, 8]})
    assert (config_only.bos_id, config_only.eos_id) == (bos, 6)
    no_bos = folder("qwen-like", {"bos_token": None, "eos_token": "<|end_of_text|>"}, {"bos_token_id": 5})
    assert no_bos.bos_id is None and no_bos.encode("the", bos=True) == hf.encode("the", add_special_tokens=False).ids
    assert folder("add-bos-false", {"add_bos_token": False}).bos_id is None
    bare = folder("bare")  # the template names BOS; EOS is nowhere, and is needed to end documents
    assert bare.bos_id == bos and bare.encode("the") == hf.encode("the").ids
    with pytest.raises(ValueError, match="no EOS token"):
        bare.encode("the", eos=True)
    qwen = json.loads((llama3 / "tokenizer.json").read_text())
    qwen["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    (tmp_path / "qwen.json").write_text(json.dumps(qwen))
    (tmp_path / "qwen.json").rename(tmp_path / "tokenizer.json")
    for settings in (None, {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}):  # no add_bos_token
        qwen_like = folder(f"qwen-{settings is None}", settings, {"bos_token_id": 5, "eos_token_id": eos},
                           source=tmp_path / "tokenizer.json")
        assert (qwen_like.bos_id, qwen_like.eos_id) == (None, eos)  # its post-processor adds no BOS
        assert qwen_like.encode("the", bos=True, eos=True) == hf.encode("the", add_special_tokens=False).ids + [eos]
    sp_file = folder("sp", None, {"bos_token_id": 1, "eos_token_id": 2}, source=spm_model / "tokenizer.model")
    assert (sp_file.bos_id, sp_file.eos_id) == (1, 2)
    with pytest.raises(ValueError, match=r"eos_token '<\|nope\|>' is not in tokenizer.json"):
        folder("unknown", {"eos_token": "<|nope|>"})


def test_a_missing_tokenizers_package_is_one_line_naming_pip(llama3, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers -> ImportError
    with pytest.raises(ValueError, match=r"needs the tokenizers package, which is not installed "
                                         r"\(pip install tokenizers\)$"):
        data.Tokenizer(llama3)


# ---------------------------------------------------------------- corpora

def write_corpus(folder: Path, docs: list[str], field="text") -> list[Path]:
    """13 docs spread over every text format: the .jsonl* files' text in `field`, parquet's in column "content"."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = lambda part: "".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(part))  # noqa: E731
    (folder / "a.jsonl").write_text(lines(docs[0:3]) + "\n")  # blank lines are not documents
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(lines(docs[3:6]).encode()))
    (folder / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines(docs[6:8]).encode()))
    pq.write_table(pa.table({"id": [8, 9, 10], "content": docs[8:11]}), folder / "d.parquet", row_group_size=2)
    (folder / "e.txt").write_text(docs[11])
    (folder / "f.md").write_text(docs[12])
    return sorted(folder.iterdir())


def test_every_format_a_folder_a_glob_and_several_paths_read_in_sorted_order(tmp_path):
    docs = texts(13, seed=2)
    files = write_corpus(tmp_path / "mix", docs, field="content")  # a non-default text field and column
    (tmp_path / "mix" / "notes.csv").write_text("not a corpus")  # neither read nor refused inside a folder
    (tmp_path / "mix" / ".tmp123-x.npy").write_bytes(b"half written")  # hidden: data.py's own temp files
    assert data.find_files(tmp_path / "mix") == files
    assert list(data.read_records(files, "content")) == docs  # .jsonl .gz .zst .parquet .txt .md, in that order
    jsonl = [f for f in files if ".jsonl" in f.name]
    assert data.find_files(str(tmp_path / "mix" / "*.jsonl*")) == jsonl  # a glob
    assert data.find_files([files[4], str(tmp_path / "mix" / "[ab].*")]) == [files[4], *files[:2]]  # several
    np.save(tmp_path / "mix" / "ids.npy", np.array([5, 6, 2, 7, 2], dtype=np.uint16))
    np.array([8, 2, 9], dtype=np.uint16).tofile(tmp_path / "mix" / "ids.bin")
    mixed = data.find_files(tmp_path / "mix")
    assert [f.name for f in mixed] == ["a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet", "e.txt", "f.md",
                                       "ids.bin", "ids.npy"]
    got = list(data.read_records(mixed, "content", eos_id=2))
    assert got[:13] == docs and [g.tolist() for g in got[13:]] == [[8, 2], [9], [5, 6, 2], [7, 2]]


def test_readers_split_token_files_at_eos_and_tokenise_text_with_bos_and_eos(tmp_path):
    np.save(tmp_path / "ids.npy", np.array([5, 6, 2, 7, 2, 8, 9], dtype=np.int64))
    docs, skipped = data.read_documents(tmp_path / "ids.npy", eos_id=2)
    assert [d.tolist() for d in docs] == [[5, 6, 2], [7, 2], [8, 9]] and skipped == 0
    docs, skipped = data.read_documents(tmp_path / "ids.npy", eos_id=2, min_len=3)
    assert [d.tolist() for d in docs] == [[5, 6, 2]] and skipped == 2
    docs, _ = data.read_documents(tmp_path / "ids.npy", eos_id=[2, 6])  # Llama 3 Instruct: several EOS ids
    assert [d.tolist() for d in docs] == [[5, 6], [2], [7, 2], [8, 9]]
    (tmp_path / "d.jsonl").write_text('{"text": "abc"}\n\n{"body": "hello", "text": "hi"}\n')
    (tmp_path / "e.jsonl").write_text('{"body": "hello"}\n')
    tok = CharTokenizer()
    assert [d.tolist() for d in data.read_documents(tmp_path / "d.jsonl", tok)[0]] == \
        [[1, 3 + ord("a"), 3 + ord("b"), 3 + ord("c"), 2], [1, 3 + ord("h"), 3 + ord("i"), 2]]
    assert [len(d) for d in data.read_documents(tmp_path / "e.jsonl", tok, text_field="body")[0]] == [7]
    (tmp_path / "f.jsonl").write_text('{"text": "a"}\n\nnot json\n')
    with pytest.raises(ValueError, match=r"f.jsonl:3: .*'text'"):
        data.read_documents(tmp_path / "f.jsonl", tok)
    with pytest.raises(ValueError, match=r"d.jsonl is text: it needs a tokenizer"):
        data.read_documents([tmp_path / "ids.npy", tmp_path / "d.jsonl"])


def test_ranks_read_disjoint_shards_that_cover_the_corpus_across_files(tmp_path):
    docs = texts(23, seed=3)
    write_corpus(tmp_path / "c", docs[:13], field="content")
    (tmp_path / "c" / "g.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in docs[13:]))
    files = data.find_files(tmp_path / "c")
    whole = list(data.read_records(files, "content"))
    shards = [list(data.read_records(files, "content", rank=r, world_size=3)) for r in range(3)]
    assert sorted(whole) == sorted(docs) and sorted(len(s) for s in shards) == [7, 8, 8]
    assert [whole[i] for r in range(3) for i in range(r, len(whole), 3)] == [d for s in shards for d in s]


def test_reading_stops_after_the_documents_it_needs(spm_model, tmp_path):
    """A file that would raise if read past the needed documents: line 4 is not JSON, line 6 not even text."""
    good = "".join(json.dumps({"text": "x" * 30}) + "\n" for _ in range(3))
    (tmp_path / "d.jsonl").write_bytes(good.encode() + b"not json\n" + b'{"text": "y"}\n' + b"\xff\xfe\x00")
    docs, _ = data.read_documents(tmp_path / "d.jsonl", CharTokenizer(), max_documents=3)
    assert len(docs) == 3
    with pytest.raises(ValueError, match=r"d.jsonl:4"):
        data.read_documents(tmp_path / "d.jsonl", CharTokenizer(), max_documents=4)
    out = tmp_path / "t.npy"  # the pre-tokenising CLI too
    data.main(["--data", str(tmp_path / "d.jsonl"), "--tokenizer", str(spm_model), "--out", str(out),
               "--max-documents", "3", "--workers", "1"])
    assert np.isin(np.load(out), 2).sum() == 3


def test_progress_reports_documents_tokens_and_throughput_on_stderr(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(5)))
    data.read_documents(tmp_path / "d.jsonl", CharTokenizer(), every=0)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5 and lines[-1].startswith("data: 5 documents, ") and "MB/s" in lines[-1]
    tokens = sum(len(t) + 2 for t in texts(5))
    assert f"{tokens:,} tokens" in lines[-1]


@pytest.mark.parametrize("case", ["empty folder", "glob without a match", "missing file", "unsupported file"])
def test_a_source_with_nothing_to_read_is_one_line_naming_it(case, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.csv").write_text("a,b")
    source, message = {
        "empty folder": (tmp_path / "empty", "no readable file"),
        "glob without a match": (str(tmp_path / "other" / "*.parquet"), "no readable file"),
        "missing file": (tmp_path / "nope.jsonl", "nope.jsonl: not found"),
        "unsupported file": (tmp_path / "other" / "x.csv", "x.csv: unsupported file type"),
    }[case]
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        data.find_files(source)
    assert message in str(error.value) and str(source) in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- the failure lines, through the CLI

def bad_corpora(tmp_path):
    good = gzip.compress(b'{"text": "abc"}\n' * 200)
    (tmp_path / "bad.jsonl.gz").write_bytes(b"this is not gzip")
    (tmp_path / "cut.jsonl.gz").write_bytes(good[:len(good) // 2])
    (tmp_path / "bad.jsonl.zst").write_bytes(b"this is not zstd either")
    pq.write_table(pa.table({"content": ["a", "b"]}), tmp_path / "t.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "t.parquet").read_bytes()[:-20])
    return {
        "corrupt .gz": ("bad.jsonl.gz", [], "bad.jsonl.gz: unreadable, corrupt or truncated (BadGzipFile"),
        "truncated .gz": ("cut.jsonl.gz", [], "cut.jsonl.gz: unreadable, corrupt or truncated (EOFError"),
        "corrupt .zst": ("bad.jsonl.zst", [], "bad.jsonl.zst: unreadable, corrupt or truncated (ZstdError"),
        "corrupt parquet": ("bad.parquet", [], "bad.parquet: unreadable, corrupt or truncated"),
        "truncated parquet": ("cut.parquet", [], "cut.parquet: unreadable, corrupt or truncated"),
        "parquet without the text column": ("t.parquet", [], "t.parquet: no column 'text' (columns: content); name "
                                            "the text column with --text-field"),
        "no pyarrow": ("t.parquet", ["pyarrow", "pyarrow.parquet"], "needs the pyarrow package, which is not "
                       "installed (pip install pyarrow)"),
        "no zstandard": ("bad.jsonl.zst", ["zstandard"], "needs the zstandard package, which is not installed "
                         "(pip install zstandard)"),
        "out not .npy": ("t.parquet", [], "must end in .npy"),
    }


@pytest.mark.parametrize("case", ["corrupt .gz", "truncated .gz", "corrupt .zst", "corrupt parquet",
                                  "truncated parquet", "parquet without the text column", "no pyarrow",
                                  "no zstandard", "out not .npy"])
def test_bad_corpora_print_one_error_line_exit_2_and_write_nothing(case, spm_model, tmp_path, capsys, monkeypatch):
    source, hidden, message = bad_corpora(tmp_path)[case]
    for module in hidden:
        monkeypatch.setitem(sys.modules, module, None)  # import module -> ImportError
    before = sorted(tmp_path.iterdir())
    out = tmp_path / ("tokens.bin" if case == "out not .npy" else "tokens.npy")
    with pytest.raises(SystemExit) as exit_:
        data.main(["--data", str(tmp_path / source), "--tokenizer", str(spm_model), "--out", str(out),
                   "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(tmp_path.iterdir()) == before  # no output, no temp file


def test_training_on_a_parquet_without_its_text_column_is_one_line_and_writes_nothing(llama3, tmp_path, capsys):
    pq.write_table(pa.table({"content": texts(4)}), tmp_path / "t.parquet")
    with pytest.raises(SystemExit) as exit_:
        train.main(["--model", str(llama3), "--data", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "out"),
                    "--window", "16", "--batch-size", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "no column 'text' (columns: content)" in err[0], err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- pre-tokenising CLI

@pytest.mark.slow  # --workers 2: spawned interpreters
def test_pretokenised_file_is_the_in_process_tokenisation_in_parallel_and_atomically(llama3, tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.setattr(data, "BATCH_CHARS", 2000)  # several batches of work, so 2 workers do start
    docs = texts(40, seed=5, words=(1, 300))
    write_corpus(tmp_path / "corpus", docs[:13], field="content")  # one name for the jsonl field and parquet column
    (tmp_path / "corpus" / "g.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in docs[13:]))
    tok = data.Tokenizer(llama3)
    want, _ = data.read_documents(tmp_path / "corpus", tok, text_field="content")  # train.py's text path
    out = tmp_path / "out" / "tokens.npy"
    out.parent.mkdir()
    for workers in (1, 2):
        result = data.main(["--data", str(tmp_path / "corpus"), "--tokenizer", str(llama3 / "tokenizer.json"),
                            "--out", str(out), "--workers", str(workers), "--text-field", "content"])
        ids = np.load(out)
        assert ids.dtype == np.uint16 and ids.tolist() == np.concatenate(want).tolist(), workers
        assert result["documents"] == 40 and result["tokens"] == len(ids)
        assert sorted(p.name for p in out.parent.iterdir()) == ["tokens.npy"]  # no temp file left
    got, _ = data.read_documents(out, eos_id=tok.eos_id)
    assert len(got) == 40 and all(d[0] == tok.bos_id and d[-1] == tok.eos_id for d in got)
    hf = HFTokenizer.from_file(str(llama3 / "tokenizer.json"))
    assert [d[1:-1].tolist() for d in got[:3]] == [hf.encode(t, add_special_tokens=False).ids for t in docs[:3]]
    stdout = capsys.readouterr().out
    assert "wrote" in stdout and "capped" not in stdout
    data.main(["--data", str(tmp_path / "corpus" / "g.jsonl"), "--tokenizer", str(llama3), "--out", str(out),
               "--max-documents", "4", "--text-field", "content", "--workers", "1"])
    assert np.isin(np.load(out), tok.eos_id).sum() == 4


def test_a_vocabulary_beyond_uint16_is_written_as_uint32(spm_model, tmp_path, monkeypatch):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(3)))
    load = data.Tokenizer.__init__

    def big(self, path):
        load(self, path)
        self.vocab_size = 70_000
    monkeypatch.setattr(data.Tokenizer, "__init__", big)
    data.main(["--data", str(tmp_path / "d.jsonl"), "--tokenizer", str(spm_model), "--out", str(tmp_path / "t.npy"),
               "--workers", "1"])
    want, _ = data.read_documents(tmp_path / "d.jsonl", data.Tokenizer(spm_model))
    ids = np.load(tmp_path / "t.npy")
    assert ids.dtype == np.uint32 and ids.tolist() == np.concatenate(want).tolist()


# ---------------------------------------------------------------- a tokenizer.json-only checkpoint end to end

def test_tokenizer_json_checkpoint_trains_on_parquet_then_ppl_on_jsonl_gz_and_passkey_on_the_export(
        llama3, tmp_path, capsys):
    assert not (llama3 / "tokenizer.model").exists()
    hf = HFTokenizer.from_file(str(llama3 / "tokenizer.json"))
    train_docs = texts(30, seed=6, words=(3, 40))
    pq.write_table(pa.table({"id": range(30), "content": train_docs}), tmp_path / "train.parquet", row_group_size=8)
    out = tmp_path / "run"
    with distributed.distributed() as device:
        train.train(options.parse_args(["--model", str(llama3), "--data", str(tmp_path / "train.parquet"),
                                      "--text-field", "content", "--out", str(out), "--window", "16", "--target",
                                      "64", "--steps", "2", "--batch-size", "2", "--lr", "1e-3",
                                      "--max-documents", "100"]), device)
    log = capsys.readouterr().out.splitlines()
    lengths = [len(hf.encode(t, add_special_tokens=False).ids) + 2 for t in train_docs]  # + BOS + EOS
    short, tokens = sum(n < 17 for n in lengths), sum(n for n in lengths if n >= 17)  # L_c + 1 = 17
    assert 0 < short < 30
    assert log[1].startswith("data: 1 file, ") and "train.parquet" in log[1] and "tokenizer.json" in log[1]
    assert log[2].startswith(f"data: {30 - short:,} documents kept, {short:,} skipped as shorter than the window + 1 "
                             f"= 17 tokens, {tokens:,} tokens, read in"), log[2]
    final = out / "final"
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in final.iterdir()}
    assert not (final / "tokenizer.model").exists()

    eval_docs = texts(6, seed=7, words=(20, 60))
    (tmp_path / "eval.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"text": t}) + "\n"
                                                                   for t in eval_docs).encode()))
    result = evaluate.main(["ppl", "--model", str(final), "--data", str(tmp_path / "eval.jsonl.gz"), "--lengths",
                            "16", "32", "--stride", "8", "--docs", "3", "--min-tokens", "32"])
    lengths = [len(hf.encode(t, add_special_tokens=False).ids) for t in eval_docs]
    kept = [n for n in lengths if n >= 32][:3]
    assert len(kept) == 3 and [r["tokens"] for r in result["results"]] == [sum(kept)] * 2  # each scored once
    assert all(np.isfinite(r["ppl"]) for r in result["results"])
    result = evaluate.main(["passkey", "--model", str(final), "--lengths", "160", "--trials", "2", "--new-tokens",
                            "2"])
    bos = hf.token_to_id("<|begin_of_text|>")
    prompts = [c["tokens"] for c in result["results"][0]["cases"]]
    assert all(100 < n <= 160 for n in prompts), prompts
    tok = data.Tokenizer(final)
    prompt = evaluate.passkey_prompt(tok, 160, 12345, 0.5)
    assert prompt[0] == bos and prompt.count(bos) == 1 and tok.decode(prompt).startswith(evaluate.TASK)


def test_passkey_on_a_checkpoint_without_any_tokenizer_names_both_files(llama3, tmp_path, capsys):
    (tmp_path / "config.json").write_bytes((llama3 / "config.json").read_bytes())  # weights never load
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["passkey", "--model", str(tmp_path), "--lengths", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == [f"error: {tmp_path}: no tokenizer.model (sentencepiece) or "
                                             f"tokenizer.json (Hugging Face tokenizers)"]
