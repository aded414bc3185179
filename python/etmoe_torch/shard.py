"""shard.py: llm.c token shards (doc/data-format.md): a 1024-byte header of 256 int32 (magic
20240520, version 1 for uint16 tokens, 2 for uint32, count), then the tokens."""
import os
import struct
import tempfile

import torch

MAGIC = 20240520


def write(path, tokens):
    tokens = [int(t) for t in tokens]
    version = 1 if max(tokens, default=0) <= 65535 else 2
    header = struct.pack("<256i", MAGIC, version, len(tokens), *([0] * 253))
    body = struct.pack("<%d%s" % (len(tokens), "H" if version == 1 else "I"), *tokens)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(header + body)
    os.replace(tmp, path)


def read(path):
    with open(path, "rb") as f:
        blob = f.read()
    magic, version, n = struct.unpack("<3i", blob[:12])
    if magic != MAGIC or version not in (1, 2):
        raise ValueError(f"{path}: not a token shard (magic {magic}, version {version})")
    fmt = "H" if version == 1 else "I"
    return torch.tensor(struct.unpack("<%d%s" % (n, fmt), blob[1024:1024 + n * (2 if version == 1 else 4)]))


def windows(tokens, T):
    """The loader's windows of T+1 tokens at stride T, in order: (n, T+1)."""
    n = (tokens.numel() - 1) // T
    return torch.stack([tokens[i * T:i * T + T + 1] for i in range(n)])


def random_shard(path, n_tokens, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    write(path, torch.randint(0, vocab, (n_tokens,), generator=g).tolist())
