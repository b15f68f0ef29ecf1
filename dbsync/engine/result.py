"""What a sync did, per label: the one result of the objects, the records and the files,
and the object that every entry point (the command, the tasks, the admin) reports from.

Counts are per label: a model's label for its objects, ``RECORDS_LABEL`` for the records
(``skipped`` counts series, the rest records), ``FILES_LABEL`` for the files (``fetched``
counts downloads, ``created``/``updated`` the objects that got or changed a file,
``deleted`` the files removed from the storage). ``counts`` is what a run keeps
(``SyncRun.model_counts``), as it is.
"""

from dataclasses import dataclass, field

COUNT_KEYS = ("fetched", "created", "updated", "unchanged", "deleted", "skipped")
# Counted apart from the objects: records (dbsync.engine.records) and files (dbsync.engine.files).
RECORDS_LABEL = "hcore.record"
FILES_LABEL = "hcore.gentityfile.content"
DATA_LABELS = frozenset({RECORDS_LABEL, FILES_LABEL})


@dataclass
class ObjectProblem:
    """One object that could not be installed, named as an operator can find it."""

    remote: str
    model: str
    pk: object
    message: str

    def __str__(self):
        return f"{self.remote}: could not install {self.model}(pk={self.pk}): {self.message}"

    def as_dict(self):
        return {"remote": self.remote, "model": self.model, "pk": self.pk, "error": self.message}


@dataclass
class SyncResult:
    remote: str
    counts: dict = field(default_factory=dict)  # label -> {COUNT_KEYS: n}
    problems: list = field(default_factory=list)  # [ObjectProblem]
    notes: list = field(default_factory=list)
    files: int = 0  # the objects' dumps (fixtures) read
    user_links_dropped: int = 0
    backup_path: str = ""
    full: bool = True
    dry_run: bool = False
    series: dict = field(default_factory=dict)  # records: remote pk -> what was done to it
    bytes: int = 0  # files: bytes downloaded

    @classmethod
    def of_part(cls, label, remote, dry_run=False):
        """The result of the records or the files: their ``label`` counted from the
        start, so that a run reports it (zeros) even when nothing was done."""
        result = cls(remote=remote, dry_run=dry_run)
        result.model(label)
        return result

    def model(self, label):
        return self.counts.setdefault(label, dict.fromkeys(COUNT_KEYS, 0))

    def reset(self):
        """Forget what an attempt that was rolled back counted (its backup stays)."""
        self.counts.clear()
        self.problems.clear()
        self.files = self.user_links_dropped = 0

    def add(self, label, key, n=1):
        self.model(label)[key] += n

    def problem(self, model, pk, message):
        problem = ObjectProblem(self.remote, model, pk, str(message))
        self.problems.append(problem)
        return problem

    def add_to(self, result):
        """Report into ``result`` (a run's): the counts of the labels (added to what it
        has: the records of series the objects' deletions took are counted there), the
        problems and the notes (of the records or the files, into the run's)."""
        for label, counts in self.counts.items():
            into = result.model(label)
            for key, n in counts.items():
                into[key] = into.get(key, 0) + n
        result.problems.extend(self.problems)
        result.notes.extend(self.notes)

    @property
    def totals(self):
        """Of the objects: records and files are counted apart (see ``summary``)."""
        return {
            key: sum(c[key] for label, c in self.counts.items() if label not in DATA_LABELS)
            for key in COUNT_KEYS
        }

    @property
    def installed(self):
        totals = self.totals
        return totals["created"] + totals["updated"] + totals["unchanged"]

    def summary(self):
        """The closing sentence, in the seed's words, with what changed."""
        t = self.totals
        verb = "Would install" if self.dry_run else "Successfully installed"
        text = (
            f"{verb} {self.installed} objects from {self.files} fixtures "
            f"({t['created']} created, {t['updated']} updated, {t['unchanged']} unchanged, "
            f"{t['deleted']} deleted, {t['skipped']} skipped)."
        )
        records = self.counts.get(RECORDS_LABEL)
        if records:
            skipped = f", {records['skipped']} series skipped" if records["skipped"] else ""
            text += (
                f" Records: {records['created']} added, {records['updated']} changed, "
                f"{records['deleted']} removed, {records['unchanged']} unchanged{skipped}."
            )
        files = self.counts.get(FILES_LABEL)
        if files:
            text += (
                f" Files: {files['fetched']} fetched, {files['deleted']} removed, "
                f"{files['unchanged']} unchanged, {files['skipped']} skipped."
            )
        return text
