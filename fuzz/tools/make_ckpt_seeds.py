#!/usr/bin/env python3
"""Writes the `ckpt` fuzz seeds (fuzz/corpus/ckpt/): small PyTorch-format zip checkpoints.

No PyTorch needed: the pickles name torch's rebuild functions and storage classes the way
`torch.save` writes them, through stand-in modules. Usage:

    python3 fuzz/tools/make_ckpt_seeds.py [golden checkpoint] [out folder]
"""
import collections
import io
import pickle
import struct
import sys
import types
import zipfile

out = sys.argv[2] if len(sys.argv) > 2 else "fuzz/corpus/ckpt"
golden = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/golden/class_custom/models/scale2.ckpt"

torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch
sys.modules["torch._utils"] = utils


def _rebuild_tensor_v2(*args):
    raise NotImplementedError


_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
for name in ["FloatStorage", "HalfStorage", "LongStorage", "IntStorage", "BFloat16Storage"]:
    cls = type(name, (), {"__module__": "torch"})
    setattr(torch, name, cls)


class Storage:
    def __init__(self, kind, key, numel, data):
        self.kind, self.key, self.numel, self.data = kind, key, numel, data


class Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def __reduce__(self):
        return (_rebuild_tensor_v2,
                (self.storage, self.offset, self.shape, self.stride, False,
                 collections.OrderedDict()))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel)
        return None


def checkpoint(path, obj, storages, root="archive", compress=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", compress) as z:
        z.writestr(f"{root}/data.pkl", buf.getvalue())
        z.writestr(f"{root}/.format_version", "1")
        z.writestr(f"{root}/byteorder", "little")
        for s in storages:
            z.writestr(f"{root}/data/{s.key}", s.data)


f32 = Storage("FloatStorage", "0", 6, struct.pack("<6f", *[0.5 * i for i in range(6)]))
f16 = Storage("HalfStorage", "1", 4, struct.pack("<4e", 1.0, -2.0, 0.25, 3.0))
i64 = Storage("LongStorage", "2", 3, struct.pack("<3q", 2, 0, 1))
i32 = Storage("IntStorage", "3", 1, struct.pack("<i", 7))
state = collections.OrderedDict()
state["transformer_ema.tokembweight"] = Tensor(f32, 0, (2, 3), (3, 1))
state["transformer_ema.headweight"] = Tensor(f16, 0, (2, 2), (1, 2))  # Fortran order
state["first_stage_model.quantize.used"] = Tensor(i64, 0, (3,), (1,))
state["alphats"] = Tensor(f32, 3, (3,), (1,))
state["counter"] = Tensor(i32, 0, (), ())
lightning = {
    "epoch": 3,
    "global_step": 120,
    "state_dict": state,
    "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}],
    "callbacks": {},
    "lr_schedulers": [],
}
storages = [f32, f16, i64, i32]
checkpoint(f"{out}/lightning.ckpt", lightning, storages)
checkpoint(f"{out}/bare_state_dict.ckpt", state, storages, root="scale1")
checkpoint(f"{out}/deflated.ckpt", lightning, storages, compress=zipfile.ZIP_DEFLATED)

# The real thing, cut down: a golden checkpoint's pickle with only its small storages.
with zipfile.ZipFile(golden) as src, zipfile.ZipFile(f"{out}/golden_small.ckpt", "w") as dst:
    for info in src.infolist():
        if info.filename.endswith("data.pkl") or "/data/" not in info.filename \
                or info.file_size <= 512:
            dst.writestr(info.filename, src.read(info.filename))

# Regression seeds: inputs that once made the reader panic (see fuzz/tests/regressions.rs).
def raw_checkpoint(path, pickle_bytes, storages=()):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        for s in storages:
            z.writestr(f"archive/data/{s.key}", s.data)


# LONG1 with 9 bytes: candle's reader shifted an i64 by 64 bits.
raw_checkpoint(f"{out}/regress_long1_9_bytes.ckpt",
               b"\x80\x02}X\x01\x00\x00\x00a\x8a\x09" + b"\x01" * 9 + b"s.")


class ShortTensor(Tensor):
    def __reduce__(self):
        return (_rebuild_tensor_v2, (self.storage,))


class HugeTensor(Tensor):
    pass


# _rebuild_tensor_v2 with one argument: candle's rebuild_args removed index 3 of a 1-tuple.
state = collections.OrderedDict()
state["short"] = ShortTensor(f32, 0, (2, 3), (3, 1))
state["ok"] = Tensor(f32, 0, (2, 3), (3, 1))
checkpoint(f"{out}/regress_short_rebuild_args.ckpt", {"state_dict": state}, [f32])

# A shape whose element count overflows usize (the size check overflowed), and a storage
# offset whose byte offset does (candle overflowed).
state = collections.OrderedDict()
state["huge"] = Tensor(f32, 0, (1 << 30, 1 << 30, 1 << 30), (1 << 30, 1 << 30, 1))
state["far"] = Tensor(f32, (1 << 62), (2,), (1,))
state["ok"] = Tensor(f32, 0, (6,), (1,))
checkpoint(f"{out}/regress_overflowing_shape.ckpt", {"state_dict": state}, [f32])
