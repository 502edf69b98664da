"""``python -m vt_drloc.report <sweep dir>`` / ``--study <study dir>``: see :mod:`vt_drloc.report.cli`."""

import sys

from vt_drloc.report.cli import main

sys.exit(main())
