"""The names of the stored feature formats, without importing torch.

`seem encode --feature-dtype` and the serving `store_dtype` setting both choose one of
these, and both must reject a name the store cannot write before any image is encoded;
their CLIs and configs import this module, which stays free of torch so that
`seem --help` and config validation stay fast. What each name means, and the byte and
mask-IoU cost of each: store.feature_store and docs/benchmarks.md, "Feature store format".
"""
from __future__ import annotations

__all__ = ["STORE_DTYPES", "FLOAT_STORE_DTYPES", "STORE_CODECS", "DEFAULT_STORE_CODEC", "check_store_dtype",
           "check_store_codec"]

#: Float formats: the tensors cast to this dtype (store format version 1).
FLOAT_STORE_DTYPES = ("float16", "bfloat16", "float32")
#: Every format a store object can be written in; "int8" = per-channel int8 (version 2),
#: "int10" = 10-bit levels per channel for `mask_features`, 8 for the other maps (version 3),
#: "axes" = `mask_features` along the model's mask axes, the other maps as int10's (version 4).
STORE_DTYPES = (*FLOAT_STORE_DTYPES, "int8", "int10", "axes")
#: Compression of the stored tensors (store.feature_store.CODECS). Every writer of new
#: objects (`seem encode`, serving's encoder) uses the default, so an object's size does
#: not depend on who wrote it: 26-27% fewer bytes than none (docs/benchmarks.md).
STORE_CODECS = ("none", "zlib", "zstd", "shuffle+zlib", "shuffle+zstd")
DEFAULT_STORE_CODEC = "shuffle+zstd"


def check_store_dtype(name: object) -> str:
    """`name` if the store can write features in it, else a ValueError listing the choices."""
    if not isinstance(name, str) or name not in STORE_DTYPES:
        raise ValueError(f"unknown feature store dtype {name!r}; choose one of {', '.join(STORE_DTYPES)}")
    return name


def check_store_codec(name: object) -> str:
    """`name` if the store can compress with it, else a ValueError listing the choices."""
    if not isinstance(name, str) or name not in STORE_CODECS:
        raise ValueError(f"unknown feature store codec {name!r}; choose one of {', '.join(STORE_CODECS)}")
    return name
