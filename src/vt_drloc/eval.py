"""``python -m vt_drloc.eval`` (``vt-drloc-eval``): evaluation of a checkpoint.

The code lives in :mod:`vt_drloc.app.eval`.
"""

from vt_drloc.app.eval import evaluate, main

__all__ = ["evaluate", "main"]

if __name__ == "__main__":
    main()
