"""safetensors.py: read and write etmoe's safetensors files (checkpoints, dumps) with the
standard library and PyTorch only (doc/checkpoint-format.md describes the container).

The writer is deterministic like etmoe's: __metadata__ first with sorted keys, tensors in byte
order of their names, compact JSON, padding with spaces to a multiple of 8, data without gaps,
written to a temporary file and renamed into place.
"""
import json
import os
import struct
import tempfile

import torch

# safetensors dtype name -> (torch dtype, bytes per element)
DTYPES = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "U8": (torch.uint8, 1),
}
NAME_OF = {dt: name for name, (dt, _) in DTYPES.items()}


class FormatError(Exception):
    """A file that is not a safetensors file this package can read (message names the file)."""


def read(path):
    """Returns (tensors, metadata): a dict name -> CPU tensor and the __metadata__ dict."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise FormatError(f"{path}: {len(blob)} bytes, too short for a safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise FormatError(f"{path}: header length {n} runs past the end of the file")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: header is not JSON: {e}") from None
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            raise FormatError(f"{path}: tensor {name}: dtype {info['dtype']} is not one of {sorted(DTYPES)}")
        dt, size = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        shape = [int(s) for s in info["shape"]]
        count = 1
        for s in shape:
            count *= s
        if end - begin != count * size or end > len(data):
            raise FormatError(f"{path}: tensor {name}: byte range [{begin}, {end}) does not hold shape {shape}")
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=dt) if count else torch.empty(0, dtype=dt)
        tensors[name] = t.reshape(shape).clone()
    return tensors, meta


def write(path, tensors, metadata=None):
    """Writes dict name -> tensor (dtypes of DTYPES) and string metadata atomically."""
    names = sorted(tensors, key=lambda s: s.encode("utf-8"))
    parts, offset = [], 0
    header = "{"
    if metadata:
        header += '"__metadata__":' + json.dumps({k: str(metadata[k]) for k in sorted(metadata)},
                                                 separators=(",", ":"), ensure_ascii=False)
    for name in names:
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in NAME_OF:
            raise ValueError(f"tensor {name}: dtype {t.dtype} cannot be written")
        raw = t.reshape(-1).numpy().tobytes() if t.numel() else b""
        entry = json.dumps({"dtype": NAME_OF[t.dtype], "shape": list(t.shape),
                            "data_offsets": [offset, offset + len(raw)]}, separators=(",", ":"))
        header += ("," if len(header) > 1 else "") + json.dumps(name) + ":" + entry
        parts.append(raw)
        offset += len(raw)
    header += "}"
    hb = header.encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            for raw in parts:
                f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
