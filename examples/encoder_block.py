"""A BERT-style encoder block for ``gatesmith compile`` (hidden 32, 2 heads, FFN 64, seq 8).

A MODEL.py for ``gatesmith compile`` defines ``model()`` (a torch.nn.Module, put in eval mode),
``example_inputs()`` (the tuple of tensors it is called with; shapes are fixed at compile time)
and, optionally, ``calibration()`` (a list of such tuples the activation ranges are taken from;
default: the example inputs alone)::

    gatesmith compile examples/encoder_block.py --config examples/chain.yaml -o out/
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

H, HEADS, FFN, SEQ = 32, 2, 64, 8


class EncoderBlock(nn.Module):
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


def model():
    torch.manual_seed(0)
    return EncoderBlock().eval()


def example_inputs():
    return (torch.randn(1, SEQ, H, generator=torch.Generator().manual_seed(1)),)


def calibration():
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(1, SEQ, H, generator=g),) for _ in range(8)]
