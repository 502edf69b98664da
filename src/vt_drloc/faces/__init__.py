"""The Lightning faces of DRLoc and the objective they share.

``module`` (:class:`DrLocModule`, a LightningModule around any timm model) and ``callback``
(:class:`DrLocCallback`, dropped into a user's own Lightning project) both run ``objective``
(:class:`DrLocConfig`, :class:`DrLocObjective`: the options, λ and the loss terms) on top of
:mod:`vt_drloc.core`; ``optim`` builds the parameter groups; ``lightning`` gives the same classes for
the ``lightning`` package. Import the public names from :mod:`vt_drloc` (or :mod:`vt_drloc.lightning`).
"""
