"""``python -m vt_drloc.predict`` (``vt-drloc-predict``): predictions for new images.

The code lives in :mod:`vt_drloc.app.predict`.
"""

from vt_drloc.app.predict import main, predict

__all__ = ["predict", "main"]

if __name__ == "__main__":
    main()
