"""Leaves that every room may import and that import nothing of vt_drloc: ``files`` (atomic writes),
``paths`` (where the data archives live), ``lightning_api`` (which Lightning package a face is built on)."""
