"""The registry of remote Enhydris instances and the record of every sync run."""

from django.db import models
from django.utils import timezone


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

    class Meta:
        ordering = ("name",)
        verbose_name = "remote database"

    def __str__(self):
        return self.name

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
        keys = ("fetched", "created", "updated", "deleted", "unchanged", "skipped")
        return {
            key: sum(counts.get(key, 0) for counts in self.model_counts.values()) for key in keys
        }
