"""gguf_to_hf.py's folder against transformers' own GGUF loader, by hand, in a side venv (transformers is never a
project dependency, and no test imports this file).

    python benchmarks/gguf_to_hf.py --gguf FILE.gguf --out DIR                       # the project venv
    /work/side/hfvenv/bin/python benchmarks/parity_gguf.py --gguf FILE.gguf --ours DIR --text a.txt b.md ...

transformers reads the GGUF itself (AutoModelForCausalLM / AutoTokenizer with gguf_file=: its own dequantization,
q/k row order and tokenizer), model.py and data.Tokenizer read the converted folder, and transformers reads that
folder's tokenizer too. Prints: the worst |difference| of every weight; fp32 logits (max |diff| and the logits'
scale) on a few prompts and on the first 1,024 tokens of the first --text file, and greedy continuations of each
(model.py's KV cache against transformers' generate, --new-tokens or up to EOS); whether each tokenizer adds BOS;
the token ids of each --text file whole and of a few strings with digits, code and unicode from data.Tokenizer,
transformers on the folder and transformers on the GGUF, and, where the GGUF's differ, whether ours without the
digit split gives them (transformers 5.25 builds "smollm" as plain GPT-2 byte-level BPE). "all agree" at the end
when every check holds.
"""
import argparse
import sys
from pathlib import Path

import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data import Tokenizer  # noqa: E402
from generate import generate  # noqa: E402
from hf import from_pretrained  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "In 1969, Neil Armstrong",
           "<|im_start|>user\nWhat is the boiling point of water in Celsius?<|im_end|>\n<|im_start|>assistant\n"]
STRINGS = ["Call 555-0123 before 2024-06-30, or pay $1,234.56 (3.14159 x 10^8) by 11:59 pm.",
           "for (int i = 0; i < n; ++i) { sum += a[i] * 0x1F; }  // O(n)\n\treturn sum;",
           "naïve café Zürich — “quoted” … 東京 2023年 Ελληνικά 🚀🦙 x² ½ ① Ⅻ ٣٤ ४२",
           "  leading spaces,\n\n\ntrailing\t \n", "<|im_start|>system\nYou are helpful<|im_end|>\n"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", type=Path, required=True)
    p.add_argument("--ours", type=Path, required=True, help="gguf_to_hf.py's folder of the same GGUF")
    p.add_argument("--text", type=Path, nargs="*", default=[], help="text files whose ids are compared whole")
    p.add_argument("--new-tokens", type=int, default=30)
    a = p.parse_args()
    torch.manual_seed(0)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, fp32 on CPU, eager attention")
    hf = AutoModelForCausalLM.from_pretrained(a.gguf.parent, gguf_file=a.gguf.name, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    hf_tok = AutoTokenizer.from_pretrained(a.gguf.parent, gguf_file=a.gguf.name)
    folder_tok = AutoTokenizer.from_pretrained(a.ours)
    ours = from_pretrained(a.ours, dtype=torch.float32).eval()
    tok = Tokenizer(a.ours)

    saved, state = load_file(a.ours / "model.safetensors"), hf.state_dict()
    worst = max(((saved[k] - state[k]).abs().max().item(), k) for k in saved)
    print(f"weights: {len(saved)} tensors, worst |ours - transformers' dequantization| {worst[0]:.1e} ({worst[1]}); "
          f"transformers' keys not in ours: {sorted(set(state) - set(saved)) or 'none'}")

    ok = worst[0] == 0.0
    long = [tok.decode(tok.encode(a.text[0].read_text(errors="replace"))[:1024])] if a.text else []
    for prompt in PROMPTS + long:  # the last: the first 1,024 tokens of the first --text file, if any
        ids = tok.encode(prompt)
        x = torch.tensor([ids])
        with torch.no_grad():
            want = hf(input_ids=x, attention_mask=torch.ones_like(x)).logits.float()
            got = ours(x)
        diff, scale = (got - want).abs().max().item(), want.abs().max().item()
        # both stop at EOS (tokenizer_config's eos_token, <|im_end|> here), the token included
        new = generate(ours, x, a.new_tokens, stop_ids=[tok.eos_id])[0].tolist()
        ref = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=a.new_tokens, do_sample=False,
                          pad_token_id=hf_tok.pad_token_id)[0, len(ids):].tolist()
        same = new == ref
        if not same:  # a near tie decides it, or a real difference: the top-2 gap where the two part
            k = next(i for i, (u, v) in enumerate(zip(new, ref)) if u != v)
            prefix = torch.tensor([ids + new[:k]])
            with torch.no_grad():
                top = hf(input_ids=prefix, attention_mask=torch.ones_like(prefix)).logits[0, -1].float().topk(2)
                mine = ours(prefix)[0, -1]
            same = (f"False: they part at token {k + 1}, where transformers' top two logits are "
                    f"{top.values[0]:.4f} / {top.values[1]:.4f} (gap {top.values[0] - top.values[1]:.1e}) and "
                    f"model.py's for the same two ids {mine[top.indices[0]]:.4f} / {mine[top.indices[1]]:.4f}")
        ok &= diff < 1e-3 and (new == ref or "gap" in same and (top.values[0] - top.values[1]).item() < 1e-3)
        print(f"{prompt[:40]!r:44} {len(ids):3d} tokens: max |dlogit| {diff:.1e} (max |logit| {scale:.1f}); "
              f"greedy ({len(new)} tokens) equal: {same}; ours: {tok.decode(new)[:60]!r}")

    def adds_bos(t):  # whether the tokenizer's own special tokens put anything before a text
        return t("a").input_ids != t("a", add_special_tokens=False).input_ids

    print(f"BOS: data.Tokenizer's bos_id {tok.bos_id}; transformers adds one on the folder {adds_bos(folder_tok)}, "
          f"on the GGUF {adds_bos(hf_tok)}")
    # transformers 5.25 builds a GGUF's "smollm" tokenizer without the digit split (its table of pre-tokenizers lacks
    # the name): ours without Digits shows whether that is the only difference
    no_digits = tokenizers.Tokenizer.from_file(str(a.ours / "tokenizer.json"))
    no_digits.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = [(f.name, f.read_text(errors="replace")) for f in a.text] + [(repr(s[:24]), s) for s in STRINGS]
    for name, text in texts:
        mine = tok.encode(text, bos=False)
        by_folder = folder_tok(text, add_special_tokens=True).input_ids
        by_gguf = hf_tok(text, add_special_tokens=True).input_ids
        ok &= mine == by_folder
        where = ""
        if mine != by_gguf:  # show the first token that differs, and the text around it
            k = next((i for i, (u, v) in enumerate(zip(mine, by_gguf)) if u != v), min(len(mine), len(by_gguf)))
            context = tok.decode(mine[max(0, k - 3):k + 2])
            where = (f" (first difference at id {k}: ours {tok.hf.id_to_token(mine[k]) if k < len(mine) else None!r}, "
                     f"GGUF's {hf_tok.convert_ids_to_tokens(by_gguf[k]) if k < len(by_gguf) else None!r}, "
                     f"in {context!r})")
            explained = no_digits.encode(text).ids == by_gguf
            ok &= explained
            where += f"; ours without the digit split == transformers(GGUF) {explained}"
        print(f"{name:30} {len(mine):6d} ids: data.Tokenizer == transformers(folder) {mine == by_folder}, "
              f"== transformers(GGUF) {mine == by_gguf}{where}")
    print("all agree (the GGUF tokenizer's differences are the digit split alone)" if ok else "MISMATCH (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
