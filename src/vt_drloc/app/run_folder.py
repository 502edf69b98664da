"""One writer per run folder, and nothing of a finished run rewritten.

* :class:`RunLock`: ``<run dir>/.run.lock`` holds the writing process's id while a run writes; a second
  run into the folder is refused (exit 2) before it writes anything; a lock left by a killed process is
  taken over.
* :func:`write_hydra_files`: ``conf/hydra`` sets ``output_subdir: null``, so Hydra writes no ``.hydra/``
  before the task runs (a refused run would rewrite a finished run's config); the app writes it once
  the folder checks have passed.
* :func:`read_metric_rows` / :func:`prepend_metric_rows`: resuming in place, Lightning's CSVLogger
  starts ``metrics.csv`` afresh; the rows logged up to the checkpoint's step are put back in front.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

LOCK_NAME = ".run.lock"


def _is_rank_zero_process() -> bool:
    # DDP ranks > 0 re-run this script into the same folder: only the launching process holds the lock
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(output_dir: Path) -> int | None:
    """Process id of a live run writing into ``output_dir`` (None if free; a dead holder's lock is stale)."""
    try:
        pid = int((Path(output_dir) / LOCK_NAME).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid != os.getpid() and _alive(pid) else None


def check_not_in_use(output_dir: Path) -> None:
    """Refuse (exit 2) a folder another live run is writing into, before anything is written to it."""
    from vt_drloc.app.config import UserError

    pid = lock_holder(output_dir) if _is_rank_zero_process() else None
    if pid is not None:
        raise UserError(
            f"output dir {str(output_dir)!r} is in use by another run (process {pid}, lock file {LOCK_NAME}); nothing "
            "was written. Choose another hydra.run.dir, or wait for that run to end (resume it later with "
            "ckpt_path=last)."
        )


class RunLock:
    """``<run dir>/.run.lock`` holding this process id while the run writes; removed when it ends.

    A lock left by a killed process (its pid is gone) is taken over."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / LOCK_NAME
        self.held = False

    def __enter__(self) -> RunLock:
        from vt_drloc.app.config import UserError

        if not _is_rank_zero_process():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if lock_holder(self.path.parent) is None:  # stale: its process is gone
                    self.path.unlink(missing_ok=True)
                    continue
                break
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            self.held = True
            return self
        check_not_in_use(self.path.parent)  # raises with the holder's pid
        raise UserError(f"could not take the run lock {str(self.path)!r}; choose another hydra.run.dir.")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def write_hydra_files(output_dir: Path, cfg: Any) -> None:
    """Write ``<run dir>/.hydra/`` (config, hydra, overrides) once the folder checks have passed.

    conf/hydra sets ``output_subdir: null`` so Hydra itself writes nothing there before the task
    runs: a refused run would otherwise rewrite a finished run's ``.hydra/``."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not (HydraConfig.initialized() and _is_rank_zero_process()):
        return
    hydra_cfg = HydraConfig.get()
    folder = Path(output_dir) / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), folder / "overrides.yaml")


# ---------------------------------------------------------------------------------- metrics.csv on resume
def read_metric_rows(path: Path, up_to_step: int) -> list[dict[str, str]]:
    """The rows of an earlier ``metrics.csv`` logged at or before ``up_to_step`` (the resume checkpoint's step)."""
    import csv

    if not Path(path).is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r for r in rows if not r.get("step") or int(float(r["step"])) <= up_to_step]


def prepend_metric_rows(path: Path, earlier: list[dict[str, str]]) -> None:
    """Put ``earlier`` rows back in front of what the resumed run logged (Lightning's CSVLogger deletes the file)."""
    import csv

    from vt_drloc.base.files import write_atomic

    if not earlier:
        return
    path = Path(path)
    later: list[dict[str, str]] = []
    if path.is_file():
        with open(path, newline="") as handle:
            later = list(csv.DictReader(handle))
    columns: list[str] = []
    for row in (*earlier, *later):
        columns += [k for k in row if k not in columns]
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows([*earlier, *later])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.getvalue().encode())
