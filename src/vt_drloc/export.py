"""``python -m vt_drloc.export`` (``vt-drloc-export``): export of a run as a timm model.

The code lives in :mod:`vt_drloc.app.export`.
"""

from vt_drloc.app.export import export_checkpoint, main

__all__ = ["export_checkpoint", "main"]

if __name__ == "__main__":
    main()
