"""Throughput of data.py: reading each corpus format, and pre-tokenising with 1 and 2 worker processes, in MB of
text per second; prints the markdown tables of BENCHMARKS.md.

    python benchmarks/bench_data.py                  # ~16 MB of stdlib text; about two minutes on 2 cores
    python benchmarks/bench_data.py --mb 64 --workers 1 2 4 8 --out data-timings.md

The corpus is Python's standard library (data.default_texts), repeated to --mb MB and written once as .jsonl,
.jsonl.gz, .jsonl.zst and .parquet in a temporary folder. Tokenizers: the embedded 4,096-piece sentencepiece BPE
(what `python train.py` uses) and a byte-level BPE in Llama 3's layout (tokenizer.json: GPT-4's split regex, then
ByteLevel), trained here on the same text with the `tokenizers` library. Every row is the best of --rounds runs;
"CPU s" adds the workers' CPU time to the main process's, so MB / CPU s is the speed a core gives when the
machine is shared (wall-clock speed-ups need idle cores).
"""
import argparse
import contextlib
import dataclasses
import io
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
from bench_pose import cpu_name  # noqa: E402

SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
         r"\s*[\r\n]+|\s+(?!\S)|\s+")  # Llama 3's tokenizer.json pre-tokenizer


def write_corpus(folder: Path, texts: list[str]) -> dict[str, Path]:
    """The same documents as .jsonl, .jsonl.gz, .jsonl.zst and .parquet."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    files = {name: folder / f"corpus{name}" for name in (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")}
    files[".jsonl"].write_bytes(lines)
    files[".jsonl.gz"].write_bytes(gzip.compress(lines, compresslevel=6))
    files[".jsonl.zst"].write_bytes(zstandard.ZstdCompressor(level=3).compress(lines))
    pq.write_table(pa.table({"text": texts}), files[".parquet"])
    return files


def llama3_style_tokenizer(folder: Path, texts: list[str], vocab_size: int) -> Path:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT), "isolated"), byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>",
                                                              "eos_token": "<|end_of_text|>"}))
    return folder / "tokenizer.json"


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the spawned workers)."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                          resource.RUSAGE_CHILDREN)))


def best(run, rounds):
    """(wall seconds, CPU seconds, result) of the fastest of `rounds` runs."""
    times = []
    for _ in range(rounds):
        t, cpu = time.perf_counter(), cpu_seconds()
        result = run()
        times.append((time.perf_counter() - t, cpu_seconds() - cpu, result))
    return min(times, key=lambda x: x[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=16, help="MB of text in the corpus")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", help="also write the tables to this file")
    a = parser.parse_args(argv)
    stdlib = data.default_texts("train", max_bytes=10_000_000)
    texts, size = [], 0
    while size < a.mb * 1e6:
        for t in stdlib:
            texts.append(t)
            size += len(t.encode("utf-8"))
            if size >= a.mb * 1e6:
                break
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_corpus(tmp, texts)
        rows = ["| format | on disk (MB) | read (s) | MB of text / s |", "|---|---:|---:|---:|"]
        for name, file in files.items():
            seconds, _, _ = best(lambda file=file: sum(1 for _ in data.read_records([file])), a.rounds)
            rows.append(f"| `{name}` | {file.stat().st_size / 1e6:.1f} | {seconds:.2f} | {size / 1e6 / seconds:.1f} |")
        tokenizers = {"sentencepiece BPE 4,096 (tokenizer.model)": data.default_tokenizer(),
                      "byte-level BPE 32,000, Llama 3 split (tokenizer.json)":
                          llama3_style_tokenizer(tmp, stdlib, 32_000)}
        rows += ["", "| tokenizer | --workers | documents | tokens | wall s | CPU s | MB of text / s | "
                 "MB / CPU s | speed-up |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for label, tokenizer in tokenizers.items():
            base = None
            for workers in a.workers:
                opts = data.DataOptions(data=[str(files[".jsonl"])], tokenizer=str(tokenizer),
                                        out=str(tmp / "tokens.npy"), workers=workers)
                with contextlib.redirect_stdout(io.StringIO()):  # its own two lines
                    seconds, cpu, counts = best(lambda opts=opts: data.pretokenise(dataclasses.replace(opts),
                                                                                   every=float("inf")), a.rounds)
                base = base or seconds
                rows.append(f"| {label} | {workers} | {counts['documents']:,} | {counts['tokens']:,} | "
                            f"{seconds:.1f} | {cpu:.1f} | {size / 1e6 / seconds:.2f} | {size / 1e6 / cpu:.2f} | "
                            f"{base / seconds:.2f}x |")
    machine = (f"{cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
               f"{size / 1e6:.1f} MB of text in {len(texts):,} documents; best of {a.rounds}")
    table = "\n".join([f"Machine: {machine}", ""] + rows)
    print(table)
    if a.out:
        Path(a.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
