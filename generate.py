"""Greedy decoding with a KV cache, the passkey test's reader (evaluate.py): prefill a prompt, optionally score a
given continuation from the same prefill, then decode one token at a time.

    from generate import generate
    new = generate(model, prompt_ids, max_new_tokens=8, stop_ids=[eos_id])   # [B, <= 8]
    python -m pytest tests/test_model.py -x -q -k "generate or prefix"      # against whole reads and float64

PromptCache keeps the keys / values of the last prompt, so that prompts sharing a prefix (passkey prompts share
their filler) prefill only what is new. The network and its per-layer cache (model.KVCache) are model.py's.
"""
import torch

from model import KVCache, Transformer


class PromptCache:
    """Every layer's KVCache and the token ids they hold, for prompts that share a prefix: reuse(ids) keeps the
    cached keys / values of the tokens ids shares with the last prompt, so that only the rest is prefilled
    (evaluate.py's passkey prompts share the filler before their key). Exact: a token's keys and values depend on
    the tokens before it only. Not under a sliding window, whose rolling buffer forgets the prefix."""

    def __init__(self, n_layers: int, max_len: int):
        self.layers, self.ids = [KVCache(max_len) for _ in range(n_layers)], []

    def reuse(self, ids: list[int]) -> int:
        """How many leading tokens of ids are cached (the rest are forgotten); at most len(ids) - 1, as the
        prompt's last token is fed again for the logits that start its answer."""
        n = 0
        for a, b in zip(self.ids[:len(ids) - 1], ids):
            if a != b:
                break
            n += 1
        for cache in self.layers:
            cache.len = min(cache.len, n)
        self.ids = list(ids)
        return n


@torch.no_grad()
def generate(model: Transformer, tokens, max_new_tokens: int, positions=None, stop_ids=(), score=None,
             prompts: PromptCache | None = None):
    """Greedy decoding with a KV cache: prefill the prompt, then one token at a time at the next position
    id (last prompt position + 1, + 2, ...). Returns the new ids [B, n], n = max_new_tokens, or fewer when
    every row has produced one of stop_ids (e.g. EOS) by then. Under a sliding window W each layer's cache
    keeps the last W tokens only (KVCache), however long the prompt.

    score: ids [B, m] to teacher-force after the same prompt; then returns (new ids, log p(score | prompt)
    [B] in float32 or wider: the sum over its m tokens, each given the prompt and those before it). They are
    decoded one at a time from the prompt's prefill, and the caches rewound to it before the greedy decoding
    (KVCache.save / restore), so the prompt is read once for both (evaluate.py's passkey).

    prompts: the caches of earlier prompts (one row, B = 1): the tokens this prompt shares with the last one are
    not prefilled again (PromptCache.reuse), only the rest, after them (continued_attention)."""
    B, T = tokens.shape
    if positions is None:
        positions = torch.arange(T, device=tokens.device)
    positions = positions.expand(B, T)
    forced = 0 if score is None else score.shape[1]
    if prompts is None:
        cache, cached = [KVCache(T + max(max_new_tokens, forced)) for _ in model.model.layers], 0
    else:
        cache, cached = prompts.layers, prompts.reuse(tokens[0].tolist())
    # [B, 1, V]: no [T, V] prefill logits
    prefill = model.lm_head(model.hidden(tokens[:, cached:], positions[:, cached:], cache)[:, -1:])
    if score is not None:
        saved = [c.save(forced) for c in cache]
        logits, logprob = prefill, 0.0
        for i in range(forced):
            logp = torch.log_softmax(logits[:, 0].to(torch.promote_types(logits.dtype, torch.float32)), -1)
            logprob = logprob + logp.gather(1, score[:, i:i + 1])[:, 0]  # [B]
            if i + 1 < forced:
                logits = model.lm_head(model.hidden(score[:, i:i + 1], positions[:, -1:] + 1 + i, cache))
        for c, s in zip(cache, saved):
            c.restore(s)
    logits, new, pos = prefill, [], positions[:, -1:]
    stop = torch.as_tensor(list(stop_ids), dtype=torch.long, device=tokens.device)
    stopped = torch.zeros(B, 1, dtype=torch.bool, device=tokens.device)
    for step in range(max_new_tokens):
        new.append(logits.argmax(-1))  # [B, 1]
        stopped |= torch.isin(new[-1], stop)
        if step + 1 < max_new_tokens and not (len(stop) and bool(stopped.all())):
            pos = pos + 1
            logits = model.lm_head(model.hidden(new[-1], pos, cache))
        else:
            break
    new = torch.cat(new, dim=1) if new else tokens.new_empty(B, 0)
    return new if score is None else (new, logprob)
