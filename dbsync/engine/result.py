"""What a run did, per model: the object that every entry point reports from."""

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
    counts: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    files: int = 0
    user_links_dropped: int = 0
    backup_path: str = ""
    full: bool = True
    dry_run: bool = False

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
