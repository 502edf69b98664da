"""``python -m vt_drloc.train`` (``vt-drloc-train``): the training app; the code lives in :mod:`vt_drloc.app.train`."""

from vt_drloc.app.train import main, train

__all__ = ["train", "main"]

if __name__ == "__main__":
    main()
