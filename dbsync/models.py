"""The registry of remote Enhydris instances and the record of every sync run."""

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


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
    password = models.CharField(
        max_length=256,
        blank=True,
        verbose_name="password",
        help_text="Password for HTTP basic authentication. Never logged.",
    )
    token = models.CharField(
        max_length=256,
        blank=True,
        verbose_name="API token",
        help_text="For a private remote that uses token authentication. Never logged.",
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
    records_cursor = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        verbose_name="records cursor",
        help_text="The remote's clock when the run whose records sync last finished with "
        "nothing skipped began; the next run asks for the summaries of the series whose "
        "records changed since then (empty: every series').",
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

    class Meta:
        ordering = ("name",)
        verbose_name = "remote database"
        permissions = [("sync_database", "Can start a sync of a remote")]

    def __str__(self):
        return self.name

    def clean(self):
        super().clean()
        if self.schedule_kind == self.SCHEDULE_INTERVAL and not self.interval_minutes:
            raise ValidationError(
                {"interval_minutes": "Give the minutes between two syncs (1 or more)."}
            )
        if self.schedule_kind == self.SCHEDULE_CRONTAB and not self.crontab.strip():
            raise ValidationError({"crontab": "Give a crontab line, e.g. '30 3 * * *'."})

    @property
    def is_scheduled(self):
        return self.is_active and (
            (self.schedule_kind == self.SCHEDULE_INTERVAL and bool(self.interval_minutes))
            or (self.schedule_kind == self.SCHEDULE_CRONTAB and bool(self.crontab.strip()))
        )

    @property
    def address(self):
        return self.ip_address or self.hostname


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
    ]

    database = models.ForeignKey(
        Database, on_delete=models.CASCADE, related_name="runs", verbose_name="remote"
    )
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=QUEUED)
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

    def totals(self):
        """Of the objects; records and files are in ``model_counts`` on their own."""
        from .result import DATA_LABELS

        keys = ("fetched", "created", "updated", "deleted", "unchanged", "skipped")
        counts = [c for label, c in self.model_counts.items() if label not in DATA_LABELS]
        return {key: sum(c.get(key, 0) for c in counts) for key in keys}
