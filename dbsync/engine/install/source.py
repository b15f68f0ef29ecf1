"""The dumps an install reads: model label -> paths, and their objects."""

from ..dumps import iter_objects
from ..errors import PayloadError


class Dumps:
    """The dump paths of each model, and the objects in them.

    A model's paths are read from ``source`` when first asked for, so that a caller
    still fetching can hand over a mapping that waits. Re-fetched dumps come after the
    model's others (``sync.install_fetched`` appends them): the last paths are the newest.
    """

    def __init__(self, source, database):
        self.source = source
        self.database = database
        self.files = {}

    def paths(self, model_label):
        if model_label not in self.files:
            self.files[model_label] = list(self.source.get(model_label, []))
        return self.files[model_label]

    def objects(self, path):
        """The objects of a dump, with payload errors naming the remote."""
        try:
            # Never read whole: a dump that is not one object per line is refused.
            yield from iter_objects(path, whole=False)
        except PayloadError as exc:
            if str(exc).startswith(str(self.database)):
                raise
            raise PayloadError(f"{self.database}: {exc}") from exc
