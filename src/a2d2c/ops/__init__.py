"""Functional operators, one home per computation."""

from .dcn import dcn_output_size, dcnv3_core, unpack_offset_mask  # noqa: F401
