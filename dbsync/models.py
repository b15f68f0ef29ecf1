"""The registry of remote Enhydris instances and the record of every sync run."""

import ipaddress

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from protocol.legacy import LAYOUT_CURRENT, LAYOUT_LEGACY

from .secrets import EncryptedTextField, UnreadableSecret


def validate_crontab(value):
    """A five-field crontab line: minute hour day-of-month month day-of-week."""
    from celery.schedules import crontab

    fields = value.split()
    if len(fields) != 5:
        raise ValidationError(
            "Give five fields separated by spaces: minute hour day-of-month month "
            "day-of-week, e.g. '30 3 * * *' for 03:30 every day.",
            code="crontab_fields",
        )
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"Not a valid crontab line: {exc}", code="crontab") from exc


class Database(models.Model):
    """A remote Enhydris instance that this instance replicates (the seed's class)."""

    SCHEME_CHOICES = [("http", "http"), ("https", "https")]
    LAYOUT_CURRENT, LAYOUT_LEGACY = LAYOUT_CURRENT, LAYOUT_LEGACY
    LAYOUT_CHOICES = [
        (LAYOUT_CURRENT, "current (manifest, keys, records, files)"),
        (LAYOUT_LEGACY, "legacy 2010 (/api/<ModelName>/ only)"),
    ]

    name = models.CharField(
        max_length=100,
        unique=True,
        verbose_name="name",
        help_text="A local name for the remote; it need not be the remote's database name.",
    )
    ip_address = models.GenericIPAddressField(
        null=True,
        blank=True,
        verbose_name="IP address",
        help_text="Address to connect to. Empty: connect to the hostname.",
    )
    hostname = models.CharField(
        max_length=255,
        verbose_name="hostname",
        help_text="FQDN of the instance; sent as the Host header (and TLS server name), "
        "so that virtual hosts behind one IP address are told apart.",
    )
    port = models.PositiveIntegerField(
        default=80, verbose_name="port", help_text="TCP port of the remote's web server."
    )
    scheme = models.CharField(
        max_length=5,
        choices=SCHEME_CHOICES,
        default="http",
        verbose_name="scheme",
        help_text="http or https. With https the certificate is verified unless "
        "'verify TLS' is off.",
    )
    api_path = models.CharField(
        max_length=200,
        default="/api/",
        verbose_name="API path",
        help_text="Path of the remote's API manifest.",
    )
    api_layout = models.CharField(
        max_length=10,
        choices=LAYOUT_CHOICES,
        default=LAYOUT_CURRENT,
        verbose_name="API layout",
        help_text="What the remote serves. 'legacy 2010': only /api/<ModelName>/ and "
        "/api/tsdata/<id>/, no manifest; every run then fetches every object (under the "
        "API path). Never guessed: a current remote that answers 404 is an error.",
    )
    verify_tls = models.BooleanField(
        default=True,
        verbose_name="verify TLS",
        help_text="Verify the remote's certificate. Turn off only for a test remote.",
    )
    username = models.CharField(
        max_length=150,
        blank=True,
        verbose_name="username",
        help_text="For a private remote that uses HTTP basic authentication.",
    )
    # Encrypted at rest (dbsync.secrets); blank: none. Cleared when the endpoint
    # changes (see save()), and sent over HTTPS only (see credentials_refusal()).
    password = EncryptedTextField(
        max_length=1024,
        blank=True,
        verbose_name="password",
        help_text="Password for HTTP basic authentication. Stored encrypted, sent over "
        "HTTPS only, never logged.",
    )
    token = EncryptedTextField(
        max_length=1024,
        blank=True,
        verbose_name="API token",
        help_text="For a private remote that uses token authentication. Stored encrypted, "
        "sent over HTTPS only, never logged.",
    )
    app_label = models.CharField(
        max_length=100,
        default="hcore",
        verbose_name="application",
        help_text="The application whose models are replicated.",
    )
    exclude = models.CharField(
        max_length=500,
        blank=True,
        verbose_name="excluded models",
        help_text="Comma-separated model names left out of scheduled syncs.",
    )
    descr = models.TextField(blank=True, verbose_name="description")
    is_active = models.BooleanField(
        default=True, verbose_name="active", help_text="Inactive remotes are never synced."
    )
    last_sync = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        verbose_name="last successful sync",
        help_text="When the last successful sync of this remote finished.",
    )
    sync_cursor = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        verbose_name="sync cursor",
        help_text="The remote's clock when the last successful full or incremental "
        "fetch began; the next incremental run asks for changes since then.",
    )
    capture_cursor = models.BigIntegerField(
        null=True,
        blank=True,
        editable=False,
        verbose_name="change cursor",
        help_text="From a remote with change capture: the oldest transaction still running "
        "when the last successful run read the remote's manifest; the next run asks for "
        "the rows and deletions of that transaction and later ones (empty: the remote "
        "gives its clock only, and the sync cursor is used).",
    )
    remote_identity = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        verbose_name="remote identity",
        help_text="The remote database's identity (cluster, timeline, database) at the last "
        "successful run; a remote whose identity changed is refused.",
    )
    files_cursor = models.BigIntegerField(
        null=True,
        blank=True,
        editable=False,
        verbose_name="files cursor",
        help_text="From a remote with change capture: the change cursor of the objects the "
        "last files sync that finished with nothing skipped worked on; the next run asks "
        "for the files of the objects written since then (empty: every object's).",
    )
    tallies = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        verbose_name="tallies",
        help_text="Figures of what is replicated here from this remote (its rows of each "
        "model, its time series), each with the transaction below which it was counted; "
        "a run counts again only those whose tables were written since "
        "(dbsync.engine.tally).",
    )
    records_cursor = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        verbose_name="records cursor",
        help_text="The remote database's clock just before the summary of the last records "
        "sync that finished with nothing skipped (from a remote that does not give it, the "
        "sync cursor of that run); the next run asks for the summaries of the series whose "
        "records changed since then (empty: every series').",
    )

    # Offboarding (``manage.py dbsync_removeremote``): the row is kept, so that its run
    # history (and the journal of the offboarding run) stays and a revert can bring the
    # remote back as it was; an offboarded remote is never synced.
    PURGED, DETACHED = "purged", "detached"
    REMOVAL_CHOICES = [
        (PURGED, "purged (its objects deleted)"),
        (DETACHED, "detached (its objects kept as local ones)"),
    ]
    removed_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        verbose_name="offboarded at",
        help_text="When the remote was offboarded (manage.py dbsync_removeremote, or the "
        "admin's Remove actions); it is never synced since. Reverting that run brings it back.",
    )
    removal = models.CharField(
        max_length=10,
        choices=REMOVAL_CHOICES,
        blank=True,
        editable=False,
        verbose_name="offboarded how",
        help_text="What the offboarding did with its replicated objects.",
    )

    SCHEDULE_NONE = "none"
    SCHEDULE_INTERVAL = "interval"
    SCHEDULE_CRONTAB = "crontab"
    SCHEDULE_CHOICES = [
        (SCHEDULE_NONE, "not scheduled"),
        (SCHEDULE_INTERVAL, "every N minutes"),
        (SCHEDULE_CRONTAB, "crontab"),
    ]
    schedule_kind = models.CharField(
        max_length=10,
        choices=SCHEDULE_CHOICES,
        default=SCHEDULE_NONE,
        verbose_name="schedule",
        help_text="When Celery beat syncs this remote by itself (a periodic task kept in "
        "step with this remote).",
    )
    interval_minutes = models.PositiveIntegerField(
        null=True,
        blank=True,
        verbose_name="interval (minutes)",
        help_text="With 'every N minutes': the minutes between the start of two syncs.",
    )
    crontab = models.CharField(
        max_length=100,
        blank=True,
        validators=[validate_crontab],
        verbose_name="crontab",
        help_text="With 'crontab': minute hour day-of-month month day-of-week, in the "
        "server's time zone; e.g. '30 3 * * *' is 03:30 every day.",
    )
    verify_every_days = models.PositiveIntegerField(
        default=7,
        verbose_name="verify every (days)",
        help_text="How often Celery beat verifies this remote's replica against the remote "
        "(hcore_remotesyncdb --verify: checksums, read-only); 0: never.",
    )

    class Meta:
        ordering = ("name",)
        verbose_name = "remote database"
        permissions = [("sync_database", "Can start a sync of a remote")]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        update_fields = kwargs.get("update_fields")
        saves_endpoint = update_fields is None or set(update_fields) & set(self.ENDPOINT_FIELDS)
        # Which secrets this save cleared: the admin tells the user to enter them again.
        self.cleared_secrets = self.secrets_to_clear() if saves_endpoint else []
        for name in self.cleared_secrets:
            setattr(self, name, "")
        if update_fields is not None and self.cleared_secrets:
            kwargs["update_fields"] = {*update_fields, *self.cleared_secrets}
        super().save(*args, **kwargs)
        self._remember_stored(None if update_fields is None else kwargs["update_fields"])

    def clean(self):
        super().clean()
        if self.schedule_kind == self.SCHEDULE_INTERVAL and not self.interval_minutes:
            raise ValidationError(
                {"interval_minutes": "Give the minutes between two syncs (1 or more)."}
            )
        if self.schedule_kind == self.SCHEDULE_CRONTAB and not self.crontab.strip():
            raise ValidationError({"crontab": "Give a crontab line, e.g. '30 3 * * *'."})
        self.clean_credentials()

    def clean_credentials(self):
        """Refuse credentials that could not be sent: to plain HTTP (see
        credentials_refusal), judged on what a save would keep."""
        cleared = self.secrets_to_clear()
        if not any(getattr(self, name) and name not in cleared for name in self.SECRET_FIELDS):
            return
        refusal = self.credentials_refusal(has_credentials=True)
        if refusal:
            raise ValidationError(refusal, code="credentials_over_http")

    @property
    def is_removed(self):
        return self.removed_at is not None

    def removed_message(self):
        """Why this remote is not synced any more, and what to do, or None."""
        if self.removed_at is None:
            return None
        return (
            f"The remote {self.name!r} was offboarded ({self.get_removal_display()}) on "
            f"{self.removed_at:%Y-%m-%d %H:%M %Z} and is never synced again. To bring it back "
            f"as it was, revert its offboarding run (manage.py dbsync_revert RUN, or the "
            f"admin's action on that run); to replicate the instance anew, register it "
            f"under another name."
        )

    @property
    def schedule_paused(self):
        """Whether a revert paused the schedule (``SchedulePause``) until resumed."""
        return self.pk is not None and SchedulePause.objects.filter(database=self).exists()

    @property
    def is_scheduled(self):
        return (
            self.is_active
            and not self.is_removed
            and not self.schedule_paused
            and (
                (self.schedule_kind == self.SCHEDULE_INTERVAL and bool(self.interval_minutes))
                or (self.schedule_kind == self.SCHEDULE_CRONTAB and bool(self.crontab.strip()))
            )
        )

    @property
    def address(self):
        return self.ip_address or self.hostname

    # --- credentials: kept for one endpoint, sent over HTTPS only ---------------------------

    # A password or token was given for one remote: moving the record to another
    # address (or scheme, or port) must not carry it there unasked.
    ENDPOINT_FIELDS = ("scheme", "hostname", "ip_address", "port")
    SECRET_FIELDS = ("password", "token")

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        instance._remember_stored()
        return instance

    def refresh_from_db(self, *args, **kwargs):
        super().refresh_from_db(*args, **kwargs)
        if kwargs.get("fields") is None and (len(args) < 2 or args[1] is None):
            self._remember_stored()

    def _remember_stored(self, names=None):
        """Note the endpoint and secrets as stored, to tell later what a save changes."""
        watched = self.ENDPOINT_FIELDS + self.SECRET_FIELDS
        if names is None:
            deferred = self.get_deferred_fields()
            names = [name for name in watched if name not in deferred]
            self._stored = {}
            self._given_secrets = set()
        for name in names:
            if name in watched:
                self._stored[name] = getattr(self, name)
                self._given_secrets.discard(name)

    def give_secret(self, name, value):
        """Set the password or token as newly given, so that it is kept even when the
        endpoint changes in the same save (whoever gave it chose to send it there)."""
        if name not in self.SECRET_FIELDS:
            raise ValueError(f"{name!r} is not a secret field")
        setattr(self, name, value)
        if not hasattr(self, "_given_secrets"):
            self._given_secrets = set()
        self._given_secrets.add(name)

    def endpoint_changed(self):
        """Whether scheme, hostname, IP address or port differ from the stored ones."""
        stored = getattr(self, "_stored", {})
        return any(
            name in stored
            and _endpoint_value(name, getattr(self, name)) != _endpoint_value(name, stored[name])
            for name in self.ENDPOINT_FIELDS
        )

    def secrets_to_clear(self):
        """The secrets a save now would clear: the endpoint changed, and they are the
        stored ones, not given anew."""
        if not self.endpoint_changed():
            return []
        stored, given = self._stored, getattr(self, "_given_secrets", set())
        return [
            name
            for name in self.SECRET_FIELDS
            if getattr(self, name)
            and name not in given
            and name in stored
            and getattr(self, name) == stored[name]
        ]

    def has_credentials(self):
        return bool(self.password or self.token)

    def unreadable_secrets(self):
        return [
            name
            for name in self.SECRET_FIELDS
            if isinstance(getattr(self, name), UnreadableSecret)
        ]

    def unreadable_secrets_message(self):
        """What is wrong and what to do when a stored secret cannot be decrypted, or None.

        A sync must not go on without it (nor send what it holds), and the admin says so.
        """
        names = self.unreadable_secrets()
        if not names:
            return None
        what = " and ".join(str(self._meta.get_field(name).verbose_name) for name in names)
        options = " and ".join(f"--{name}-file" for name in names)
        reason = getattr(self, names[0]).reason
        return (
            f"The stored {what} of remote {self.name!r} cannot be decrypted: {reason}. "
            f"Put the key back in DBSYNC_SECRET_KEYS (or DJANGO_SECRET_KEY_FALLBACKS), or "
            f"enter the {what} again (in the admin, or with manage.py dbsync_addremote "
            f"--name {self.name} {options})."
        )

    def credentials_refusal(self, has_credentials=None):
        """Why this remote's password or token may not be sent, or None.

        They go over HTTPS only; DBSYNC_ALLOW_HTTP_CREDENTIALS lets them go over plain
        HTTP to a loopback IP address (development, tests), never elsewhere.
        ``has_credentials``: whether it has any (default: the ones it holds now).
        """
        if has_credentials is None:
            has_credentials = self.has_credentials()
        if not has_credentials or self.scheme == "https":
            return None
        if settings.DBSYNC_ALLOW_HTTP_CREDENTIALS and is_loopback(self.address):
            return None
        allowed = (
            " (DBSYNC_ALLOW_HTTP_CREDENTIALS is on, but it allows plain HTTP to a loopback "
            "IP address only)"
            if settings.DBSYNC_ALLOW_HTTP_CREDENTIALS
            else ""
        )
        return (
            f"Remote {self.name!r} has a password or token, which is sent over HTTPS only, "
            f"and its scheme is http{allowed}. Set the scheme to https (and the port, "
            f"usually 443), or clear the password and token."
        )


def _endpoint_value(name, value):
    """Values compared as what they mean: "" and None are no IP address, 8080 is "8080"."""
    if name == "ip_address":
        return str(value).strip() if value else None
    if name == "port":
        try:
            return int(value)
        except (TypeError, ValueError):
            return value
    if name == "hostname":
        return (value or "").strip().lower()
    return value


def is_loopback(address):
    """Whether ``address`` is a loopback IP literal (a name is not trusted to be)."""
    try:
        return ipaddress.ip_address(str(address).strip("[]")).is_loopback
    except ValueError:
        return False


class SyncRun(models.Model):
    """One attempt to sync a remote, whatever started it and however it ended."""

    QUEUED = "queued"
    FETCHING = "fetching"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUSED = "refused"
    STATUS_CHOICES = [
        (QUEUED, "queued"),
        (FETCHING, "fetching"),
        (RUNNING, "running"),
        (SUCCEEDED, "succeeded"),
        (FAILED, "failed"),
        (REFUSED, "refused"),
    ]
    ACTIVE = (QUEUED, FETCHING, RUNNING)

    TRIGGER_CHOICES = [
        ("command", "command"),
        ("admin", "admin"),
        ("beat", "beat"),
        ("task", "task"),
        ("offboard", "offboarding (dbsync_removeremote)"),
    ]
    OFFBOARD = "offboard"

    SYNC, VERIFY, REPAIR = "sync", "verify", "repair"
    KIND_CHOICES = [(SYNC, "sync"), (VERIFY, "verification"), (REPAIR, "repair")]

    database = models.ForeignKey(
        Database, on_delete=models.CASCADE, related_name="runs", verbose_name="remote"
    )
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=QUEUED)
    kind = models.CharField(
        max_length=10,
        choices=KIND_CHOICES,
        default=SYNC,
        verbose_name="kind",
        help_text="A sync, a verification of the replica against the remote (--verify), "
        "or a repair of what differs (--repair).",
    )
    verification = models.JSONField(
        default=dict,
        blank=True,
        verbose_name="verification",
        help_text="A verification or repair: its finding ('equal' or 'differs'), the "
        "bytes read from the remote, and per model what differs (remote pks).",
    )
    trigger = models.CharField(
        max_length=10,
        choices=TRIGGER_CHOICES,
        default="command",
        help_text="Who or what started the run.",
    )
    started_by = models.CharField(max_length=150, blank=True, help_text="User, if any.")
    options = models.JSONField(default=dict, blank=True, help_text="Options of the run.")
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Last sign of life of the process working on the run.",
    )
    full = models.BooleanField(default=False, help_text="Whether the run fetched everything.")
    dry_run = models.BooleanField(default=False)
    progress = models.CharField(max_length=200, blank=True)
    model_counts = models.JSONField(
        default=dict,
        blank=True,
        help_text="Per model: fetched, created, updated, deleted, unchanged, skipped.",
    )
    errors = models.JSONField(default=list, blank=True)
    message = models.TextField(blank=True)
    backup_path = models.CharField(max_length=500, blank=True)
    remote_time = models.DateTimeField(
        null=True, blank=True, help_text="The remote's clock when the fetch began."
    )
    fetch_plan = models.JSONField(
        default=dict,
        blank=True,
        help_text="Celery runs: what is fetched (the remote's manifest entries, full or "
        "incremental, since when) and, once fetched, each dump's size and checksum.",
    )
    disk_spent = models.BigIntegerField(
        default=0,
        verbose_name="disk spent",
        help_text="Celery runs: the bytes its fetch tasks have written (or reserved while "
        "they write), counted against its disk budget (DBSYNC_RUN_DISK_BUDGET), which "
        "they share.",
    )
    task_id = models.CharField(
        max_length=255,
        blank=True,
        help_text="Celery runs: the id of the install task (the end of the pipeline).",
    )
    notified_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the admins were mailed about this failure (once per failure streak).",
    )
    deletions = models.JSONField(
        default=dict,
        blank=True,
        verbose_name="refused deletions",
        help_text="A run refused by a deletion guard: what it would have removed (the "
        "remote pks of the objects per model, the records each series would be left "
        "with, and the counts).",
    )
    approved_by = models.CharField(
        max_length=150,
        blank=True,
        verbose_name="deletions approved by",
        help_text="The user who approved this run's refused deletions once.",
    )
    approved_at = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name="deletions approved at",
        help_text="When this run's refused deletions were approved.",
    )
    approval_used_by = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="approvals_used",
        verbose_name="approval used by",
        help_text="The run that had this approval in hand (it is spent then).",
    )
    approval_used_at = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name="approval used at",
        help_text="When a later run had this approval in hand.",
    )
    JOURNAL_NONE, JOURNAL_KEPT, JOURNAL_PRUNED = "", "kept", "pruned"
    JOURNAL_CHOICES = [
        (JOURNAL_NONE, "none"),
        (JOURNAL_KEPT, "kept"),
        (JOURNAL_PRUNED, "pruned (retention)"),
    ]
    journal = models.CharField(
        max_length=10,
        choices=JOURNAL_CHOICES,
        blank=True,
        default=JOURNAL_NONE,
        verbose_name="journal",
        help_text="Whether the run's changes are journaled, so that it can be reverted "
        "(none: run with -N, on SQLite, or a dry run; pruned: past DBSYNC_JOURNAL_KEEP or "
        "DBSYNC_JOURNAL_MAX_AGE_DAYS).",
    )
    reverted_at = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name="reverted at",
        help_text="When the database was brought back to its state before this run.",
    )
    reverted_by = models.CharField(
        max_length=150,
        blank=True,
        verbose_name="reverted by",
        help_text="Who reverted this run (a user, or 'command').",
    )

    class Meta:
        ordering = ("-started_at",)
        verbose_name = "sync run"
        indexes = [models.Index(fields=["database", "status"])]

    def __str__(self):
        return f"{self.database} {self.started_at:%Y-%m-%d %H:%M} {self.status}"

    @property
    def is_active(self):
        return self.status in self.ACTIVE

    @property
    def duration(self):
        if self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def can_be_approved(self):
        """A failed run refused by a guard, whose deletions are not approved yet."""
        return self.status == self.FAILED and bool(self.deletions) and self.approved_at is None

    @property
    def can_be_reverted(self):
        """Journaled, ended, and not reverted yet (later runs are checked by the revert)."""
        kept = self.journal == self.JOURNAL_KEPT
        return kept and self.reverted_at is None and not self.is_active

    @property
    def approval_pending(self):
        return self.approved_at is not None and self.approval_used_at is None

    def totals(self):
        """Of the objects; records and files are in ``model_counts`` on their own."""
        from .engine.result import DATA_LABELS

        keys = ("fetched", "created", "updated", "deleted", "unchanged", "skipped")
        counts = [c for label, c in self.model_counts.items() if label not in DATA_LABELS]
        return {key: sum(c.get(key, 0) for c in counts) for key in keys}


class SchedulePause(models.Model):
    """A remote's schedule held back (after a revert, so that the next scheduled run
    does not bring back at once what was just undone), until an operator resumes it.
    A model of its own, not a field of the remote: the revert restores the remote's row
    exactly as it was before the run."""

    database = models.OneToOneField(
        Database,
        on_delete=models.CASCADE,
        related_name="schedule_pause",
        verbose_name="remote",
    )
    paused_at = models.DateTimeField(default=timezone.now, verbose_name="paused at")
    reason = models.TextField(blank=True, verbose_name="reason")

    class Meta:
        verbose_name = "paused schedule"

    def __str__(self):
        return f"{self.database}: paused since {self.paused_at:%Y-%m-%d %H:%M}"


class TaskCount(models.Model):
    """How many executions of a Celery task ended with an outcome, and the time they
    took: each worker process adds its own (``dbsync.runs.task_counts``, from Celery's
    signals), ``/-/metrics`` reads the sums. Never reset: Prometheus' counters."""

    SUCCEEDED, FAILED, RETRIED = "succeeded", "failed", "retried"
    OUTCOME_CHOICES = [(SUCCEEDED, "succeeded"), (FAILED, "failed"), (RETRIED, "retried")]

    task = models.CharField(
        max_length=200, verbose_name="task", help_text="The Celery task's name."
    )
    outcome = models.CharField(
        max_length=10,
        choices=OUTCOME_CHOICES,
        verbose_name="outcome",
        help_text="How the executions ended (a retried one raised Retry: it runs again).",
    )
    count = models.PositiveBigIntegerField(
        default=0, verbose_name="count", help_text="Executions of the task that ended so."
    )
    seconds = models.FloatField(
        default=0.0,
        verbose_name="seconds",
        help_text="Their runtime, summed (the worker's clock, from start to end).",
    )

    class Meta:
        verbose_name = "Celery task count"
        constraints = [
            models.UniqueConstraint(fields=["task", "outcome"], name="dbsync_taskcount_once")
        ]

    def __str__(self):
        return f"{self.task} {self.outcome}: {self.count}"
