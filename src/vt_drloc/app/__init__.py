"""The command-line app: ``python -m vt_drloc.train|eval|export|predict`` and what they need.

``config`` checks a whole run config (and turns bad input into one paragraph + exit 2), ``train`` builds
and fits, ``eval`` / ``export`` / ``predict`` read what a run wrote; ``checkpoints``, ``run_folder``,
``reliability``, ``results`` and ``progress`` keep a run's folder whole, resumable and readable.
The app composes the faces (:mod:`vt_drloc.faces`), data and models; nothing below imports it.
"""
