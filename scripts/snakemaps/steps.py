"""What every rule adapter shares: logging to the rule's log, clean errors.

An adapter calls ``run_step(smk, function, **kwargs)``. A job that asks for
the ``gpu`` resource first claims its own GPU(s) (``snakemaps.gpus``).
Progress goes to the rule's ``log:`` file and to stderr; a ``UserError`` is printed as one clear
message (no traceback) and the job exits with status 1, so Snakemake stops
the run before anything downstream starts.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def configure_logging(log_file: str | Path | None, level: int = logging.INFO) -> None:
    """Send the package's log records to ``log_file`` and stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)
    logging.Formatter.converter = time.gmtime


def run_step(smk: Any, function: Callable[..., Any], **kwargs: Any) -> Any:
    """Run one package function for a Snakemake job with logging and clean errors."""
    log_file = smk.log[0] if len(smk.log) else None
    configure_logging(log_file)
    logger = logging.getLogger("snakemaps")
    logger.info("rule %s: %s", smk.rule, dict(smk.wildcards.items()))
    from .gpus import claim

    try:
        with claim(int(getattr(smk.resources, "gpu", 0) or 0)):
            return function(**kwargs)
    except UserError as error:
        logger.error("%s", error)
        sys.exit(1)
