"""Functional operations of the dynamic convolutions, each written once.

Keep this file a plain list of re-exports (one line per op module).
"""

from .dcn import dcn_output_size, dcnv3_core, unpack_offset_mask
from .mixed_conv import IMPLS as MIXED_CONV_IMPLS
from .mixed_conv import mixed_conv2d

__all__ = [
    "MIXED_CONV_IMPLS",
    "dcn_output_size",
    "dcnv3_core",
    "mixed_conv2d",
    "unpack_offset_mask",
]
