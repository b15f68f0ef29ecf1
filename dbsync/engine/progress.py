"""The progress messages of a sync.

Every step takes ``log(message, level)``: the command passes one that writes to its
stdout by verbosity (1 summary, 2 per model, 3 per object or series), the Celery tasks
one that writes the worker's log. ``quiet``, the default, keeps them at DEBUG.
"""

import logging

logger = logging.getLogger(__name__)


def quiet(message, level=1):
    logger.debug("%s", message)
