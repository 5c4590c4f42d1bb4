"""A small GPT-style decoder with a KV cache, for ``gatesmith run`` and greedy generation
(2 pre-LN layers, hidden 32, 2 heads, FFN 64, context 16, vocabulary 64).

One call is one decode step with static shapes: the token ``ids [1, 1]``, its position as a
one-hot row ``pos [1, CTX]``, an additive mask ``mask [1, CTX]`` (0 up to the position, -1e9
after it) and the caches ``k, v [LAYERS, 1, HEADS, CTX, D]``; it returns the logits and the
updated caches. The prompt is fed one token at a time through the same step, so one compiled
graph serves prefill and decode (every GEMM is GEMV-shaped, M = 1). :func:`generate` runs it
greedily with any callable of the step's signature::

    gatesmith run examples/gpt_decoder.py --config examples/chain.yaml --device golden
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, H, HEADS, FFN, CTX, LAYERS = 64, 32, 2, 64, 16, 2
D = H // HEADS


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(H), nn.LayerNorm(H)
        self.q, self.k, self.v, self.o = (nn.Linear(H, H) for _ in range(4))
        self.f1, self.f2 = nn.Linear(H, FFN), nn.Linear(FFN, H)

    def forward(self, x, pos, mask, kc, vc):
        h = self.ln1(x)
        q, k, v = (f(h).view(1, 1, HEADS, D).transpose(1, 2) for f in (self.q, self.k, self.v))
        oh = pos.view(1, 1, CTX, 1)
        kc = kc * (1.0 - oh) + k * oh  # write this position of the cache
        vc = vc * (1.0 - oh) + v * oh
        att = (q @ kc.transpose(-2, -1)) / math.sqrt(D) + mask.view(1, 1, 1, CTX)
        y = att.softmax(-1) @ vc
        x = x + self.o(y.transpose(1, 2).reshape(1, 1, H))
        return x + self.f2(F.gelu(self.f1(self.ln2(x)))), kc, vc


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, H)
        self.pos = nn.Linear(CTX, H, bias=False)  # one-hot position -> position embedding
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(H)
        self.head = nn.Linear(H, VOCAB)

    def forward(self, ids, pos, mask, k, v):
        x = self.tok(ids) + self.pos(pos).view(1, 1, H)
        ks, vs = [], []
        for i, blk in enumerate(self.blocks):
            x, kc, vc = blk(x, pos, mask, k[i], v[i])
            ks.append(kc)
            vs.append(vc)
        return self.head(self.ln(x)), torch.stack(ks), torch.stack(vs)


def model():
    torch.manual_seed(0)
    m = Decoder().eval()
    with torch.no_grad():
        m.pos.weight.mul_(2.0)
    return m


def step_inputs(token: int, t: int, k, v):
    pos = F.one_hot(torch.tensor([t]), CTX).float()
    mask = torch.where(torch.arange(CTX) <= t, 0.0, -1e9).view(1, CTX)
    return (torch.tensor([[token]]), pos, mask, k, v)


def empty_cache():
    z = torch.zeros(LAYERS, 1, HEADS, CTX, D)
    return z, z.clone()


def generate(step, prompt: list[int], new_tokens: int, record=None) -> list[int]:
    """Greedy generation with ``step`` (the model or a compiled split of it); ``record``
    (a list) receives every step's inputs."""
    k, v = empty_cache()
    out = list(prompt)
    for t in range(len(prompt) + new_tokens - 1):
        x = step_inputs(out[t], t, k, v)
        if record is not None:
            record.append(x)
        logits, k, v = step(*x)
        if t + 1 >= len(prompt):
            out.append(int(logits[0, -1].argmax()))
    return out


def prompts(n, seed=5, length=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (length,), generator=g).tolist() for _ in range(n)]


def example_inputs():
    k, v = empty_cache()
    return step_inputs(1, 0, k, v)


def calibration():
    rec: list = []
    m = model()
    with torch.no_grad():
        for p in prompts(4, seed=7):
            generate(m, p, 6, rec)
    return rec[::3]


def requests():
    rec: list = []
    m = model()
    with torch.no_grad():
        generate(m, prompts(1, seed=9)[0], 4, rec)
    return rec
