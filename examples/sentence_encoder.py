"""A small BERT-style sentence encoder for ``gatesmith run`` (2 post-LN layers, hidden 32,
2 heads, FFN 64, 8 tokens, vocabulary 64; mean-pooled sentence embeddings).

A MODEL.py for ``gatesmith run`` defines ``model()`` (eval mode), ``example_inputs()`` (the
tuple of tensors it is called with; shapes are fixed at compile time), optionally
``calibration()`` (input tuples the activation ranges come from) and ``requests()`` (the
inputs ``gatesmith run`` pushes through, pipelined over the accelerator and the host)::

    gatesmith run examples/sentence_encoder.py --config examples/chain.yaml --device golden
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, H, HEADS, FFN, SEQ, LAYERS = 64, 32, 2, 64, 8, 2


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(H, H) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(H), nn.LayerNorm(H)
        self.f1, self.f2 = nn.Linear(H, FFN), nn.Linear(FFN, H)

    def forward(self, x):
        b, s, h = x.shape
        d = h // HEADS
        q, k, v = (f(x).view(b, s, HEADS, d).transpose(1, 2) for f in (self.q, self.k, self.v))
        att = ((q @ k.transpose(-2, -1)) / math.sqrt(d)).softmax(-1)
        y = self.o((att @ v).transpose(1, 2).contiguous().view(b, s, h))
        x = self.ln1(x + y)
        return self.ln2(x + self.f2(F.gelu(self.f1(x))))


class SentenceEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, H)
        self.pos = nn.Parameter(torch.randn(SEQ, H) * 0.5)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))

    def forward(self, ids):
        x = self.tok(ids) + self.pos
        for layer in self.layers:
            x = layer(x)
        return x.mean(dim=1)  # [batch, H]: the sentence embedding


def model():
    torch.manual_seed(0)
    return SentenceEncoder().eval()


def sentences(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, VOCAB, (1, SEQ), generator=g),) for _ in range(n)]


def example_inputs():
    return sentences(1, 1)[0]


def calibration():
    return sentences(8, 2)


def requests():
    return sentences(4, 3)
