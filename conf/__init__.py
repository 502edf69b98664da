"""Hydra configs of vt_drloc (the top-level conf/ folder, installed as vt_drloc.conf)."""
