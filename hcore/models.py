"""The Enhydris domain models, with the field names of the 2010 schema.

Field names follow Enhydris as it was when dbsync was written, so that a dump of an
instance of that era (``shared/reference/enhydris-2010-dbsync-testdata.json``) loads
unchanged. Every root model carries the replication bookkeeping of
:class:`ReplicatedModel`; multi-table children share their root's row and so its
``original_id``/``original_db``.
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models


class ReplicatedModel(models.Model):
    """Bookkeeping that every root model carries for dbsync.

    ``original_db`` is the remote an object was replicated from (null for objects
    created here) and ``original_id`` its primary key there.
    """

    original_id = models.BigIntegerField(
        null=True,
        blank=True,
        editable=False,
        verbose_name="original id",
        help_text="Primary key of this object at the remote it was replicated from.",
    )
    original_db = models.ForeignKey(
        "dbsync.Database",
        null=True,
        blank=True,
        editable=False,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name="original database",
        help_text="The remote this object was replicated from; empty for local objects.",
    )
    last_modified = models.DateTimeField(
        auto_now=True,
        db_index=True,
        verbose_name="last modified",
        help_text="Updated on every change; incremental syncs rely on it.",
    )

    class Meta:
        abstract = True


def replication_constraint(name):
    return models.UniqueConstraint(
        fields=["original_db", "original_id"], name=f"{name}_unique_original"
    )


class Lookup(ReplicatedModel):
    descr = models.CharField(max_length=200, blank=True, verbose_name="description")
    descr_alt = models.CharField(
        max_length=200, blank=True, verbose_name="description (alternative language)"
    )

    class Meta:
        abstract = True
        ordering = ("descr",)

    def __str__(self):
        return self.descr or self.descr_alt or f"#{self.pk}"


# --- Lentity: persons and organizations -------------------------------------


class Lentity(ReplicatedModel):
    remarks = models.TextField(blank=True)
    remarks_alt = models.TextField(blank=True)

    class Meta:
        verbose_name = "legal entity"
        verbose_name_plural = "legal entities"
        constraints = [replication_constraint("lentity")]

    def __str__(self):
        for child in ("person", "organization"):
            if hasattr(self, child):
                return str(getattr(self, child))
        return f"Lentity #{self.pk}"


class Person(Lentity):
    last_name = models.CharField(max_length=100)
    first_name = models.CharField(max_length=100, blank=True)
    middle_names = models.CharField(max_length=100, blank=True)
    initials = models.CharField(max_length=20, blank=True)
    last_name_alt = models.CharField(max_length=100, blank=True)
    first_name_alt = models.CharField(max_length=100, blank=True)
    middle_names_alt = models.CharField(max_length=100, blank=True)
    initials_alt = models.CharField(max_length=20, blank=True)

    class Meta:
        ordering = ("last_name", "first_name")

    def __str__(self):
        return " ".join(part for part in (self.first_name, self.last_name) if part)


class Organization(Lentity):
    name = models.CharField(max_length=200)
    acronym = models.CharField(max_length=50, blank=True)
    name_alt = models.CharField(max_length=200, blank=True)
    acronym_alt = models.CharField(max_length=50, blank=True)

    class Meta:
        ordering = ("name",)

    def __str__(self):
        return self.acronym or self.name


# --- Gentity: geographical entities -------------------------------------------


class Gentity(ReplicatedModel):
    # Nullable keys into Gentity's own subclasses: the cycle dbsync must handle.
    water_basin = models.ForeignKey(
        "WaterBasin",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="gentities_in_basin",
    )
    water_division = models.ForeignKey(
        "WaterDivision",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="gentities_in_division",
    )
    political_division = models.ForeignKey(
        "PoliticalDivision",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="gentities_in_division",
    )
    name = models.CharField(max_length=200, blank=True)
    name_alt = models.CharField(max_length=200, blank=True)
    short_name = models.CharField(max_length=50, blank=True)
    short_name_alt = models.CharField(max_length=50, blank=True)
    remarks = models.TextField(blank=True)
    remarks_alt = models.TextField(blank=True)

    class Meta:
        verbose_name = "geographical entity"
        verbose_name_plural = "geographical entities"
        constraints = [replication_constraint("gentity")]

    def __str__(self):
        return self.short_name or self.name or f"Gentity #{self.pk}"


class Gpoint(Gentity):
    abscissa = models.FloatField(null=True, blank=True)
    ordinate = models.FloatField(null=True, blank=True)
    srid = models.IntegerField(null=True, blank=True)
    approximate = models.BooleanField(default=False)
    altitude = models.FloatField(null=True, blank=True)
    asrid = models.IntegerField(null=True, blank=True)


class Gline(Gentity):
    gpoint1 = models.ForeignKey(
        Gpoint, null=True, blank=True, on_delete=models.SET_NULL, related_name="glines1"
    )
    gpoint2 = models.ForeignKey(
        Gpoint, null=True, blank=True, on_delete=models.SET_NULL, related_name="glines2"
    )
    length = models.FloatField(null=True, blank=True)


class Garea(Gentity):
    area = models.FloatField(null=True, blank=True)


class PoliticalDivision(Garea):
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    code = models.CharField(max_length=5, blank=True)


class WaterDivision(Garea):
    pass


class WaterBasin(Garea):
    # The 2010 schema also had a ``water_division`` here; it clashed with Gentity's
    # own and is the one 2010 field this schema leaves out.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )


# --- Lookups --------------------------------------------------------------------


class GentityAltCodeType(Lookup):
    class Meta(Lookup.Meta):
        constraints = [replication_constraint("gentityaltcodetype")]


class GentityAltCode(ReplicatedModel):
    gentity = models.ForeignKey(Gentity, on_delete=models.CASCADE)
    type = models.ForeignKey(GentityAltCodeType, on_delete=models.CASCADE)
    value = models.CharField(max_length=100)

    class Meta:
        constraints = [replication_constraint("gentityaltcode")]

    def __str__(self):
        return self.value


class FileType(Lookup):
    mime_type = models.CharField(max_length=64)

    class Meta(Lookup.Meta):
        constraints = [replication_constraint("filetype")]


class GentityFile(ReplicatedModel):
    gentity = models.ForeignKey(Gentity, on_delete=models.CASCADE)
    date = models.DateField(null=True, blank=True)
    file_type = models.ForeignKey(FileType, on_delete=models.CASCADE)
    content = models.FileField(upload_to="gentityfile", blank=True)
    descr = models.CharField(max_length=100, verbose_name="description")
    remarks = models.TextField(blank=True)
    descr_alt = models.CharField(max_length=100, blank=True)
    remarks_alt = models.TextField(blank=True)

    class Meta:
        constraints = [replication_constraint("gentityfile")]

    def __str__(self):
        return self.descr


class EventType(Lookup):
    class Meta(Lookup.Meta):
        constraints = [replication_constraint("eventtype")]


class GentityEvent(ReplicatedModel):
    gentity = models.ForeignKey(Gentity, on_delete=models.CASCADE)
    date = models.DateTimeField()
    type = models.ForeignKey(EventType, on_delete=models.CASCADE)
    user = models.CharField(max_length=64, blank=True)
    report = models.TextField(blank=True)
    report_alt = models.TextField(blank=True)

    class Meta:
        ordering = ("-date",)
        constraints = [replication_constraint("gentityevent")]

    def __str__(self):
        return f"{self.date:%Y-%m-%d} {self.type}"


# --- Stations and what hangs off them -------------------------------------------


class StationType(Lookup):
    class Meta(Lookup.Meta):
        constraints = [replication_constraint("stationtype")]


class Station(Gpoint):
    owner = models.ForeignKey(Lentity, on_delete=models.CASCADE, related_name="owned_stations")
    type = models.ForeignKey(StationType, on_delete=models.CASCADE)
    is_active = models.BooleanField(default=False)
    is_automatic = models.BooleanField(default=False)
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)
    overseers = models.ManyToManyField(
        "Person", through="Overseer", related_name="stations_overseen", blank=True
    )
    # Keys to local user accounts: never served, never replicated.
    creator = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="created_stations",
    )
    maintainers = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="maintaining_stations"
    )


class Overseer(ReplicatedModel):
    station = models.ForeignKey(Station, on_delete=models.CASCADE)
    person = models.ForeignKey(Person, on_delete=models.CASCADE)
    is_current = models.BooleanField(default=False)
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)

    class Meta:
        constraints = [replication_constraint("overseer")]

    def __str__(self):
        return f"{self.person} ({self.station})"


class InstrumentType(Lookup):
    class Meta(Lookup.Meta):
        constraints = [replication_constraint("instrumenttype")]


class Instrument(ReplicatedModel):
    station = models.ForeignKey(Station, on_delete=models.CASCADE)
    type = models.ForeignKey(InstrumentType, on_delete=models.CASCADE)
    manufacturer = models.CharField(max_length=50, blank=True)
    model = models.CharField(max_length=50, blank=True)
    is_active = models.BooleanField(default=False)
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)
    name = models.CharField(max_length=100, blank=True)
    remarks = models.TextField(blank=True)
    name_alt = models.CharField(max_length=100, blank=True)
    remarks_alt = models.TextField(blank=True)

    class Meta:
        constraints = [replication_constraint("instrument")]

    def __str__(self):
        return self.name or f"Instrument #{self.pk}"


class Variable(Lookup):
    class Meta(Lookup.Meta):
        constraints = [replication_constraint("variable")]


class UnitOfMeasurement(Lookup):
    symbol = models.CharField(max_length=50)
    variables = models.ManyToManyField(Variable, blank=True)

    class Meta(Lookup.Meta):
        verbose_name = "unit of measurement"
        constraints = [replication_constraint("unitofmeasurement")]


class TimeZone(ReplicatedModel):
    code = models.CharField(max_length=50)
    utc_offset = models.SmallIntegerField(help_text="Offset from UTC, in minutes.")

    class Meta:
        ordering = ("utc_offset",)
        constraints = [replication_constraint("timezone")]

    def __str__(self):
        return f"{self.code} (UTC{self.utc_offset:+d} min)"


class TimeStep(Lookup):
    length_minutes = models.PositiveIntegerField(default=0)
    length_months = models.PositiveSmallIntegerField(default=0)

    class Meta(Lookup.Meta):
        constraints = [replication_constraint("timestep")]

    def clean(self):
        # A time step is either a number of minutes or a number of months, never both.
        if bool(self.length_minutes) == bool(self.length_months):
            raise ValidationError(
                "Exactly one of length_minutes and length_months must be non-zero."
            )


class Timeseries(ReplicatedModel):
    gentity = models.ForeignKey(Gentity, on_delete=models.CASCADE)
    variable = models.ForeignKey(Variable, on_delete=models.CASCADE)
    unit_of_measurement = models.ForeignKey(UnitOfMeasurement, on_delete=models.CASCADE)
    name = models.CharField(max_length=200, blank=True)
    name_alt = models.CharField(max_length=200, blank=True)
    precision = models.SmallIntegerField(null=True, blank=True)
    time_zone = models.ForeignKey(TimeZone, on_delete=models.CASCADE)
    remarks = models.TextField(blank=True)
    remarks_alt = models.TextField(blank=True)
    instrument = models.ForeignKey(Instrument, null=True, blank=True, on_delete=models.SET_NULL)
    time_step = models.ForeignKey(TimeStep, null=True, blank=True, on_delete=models.SET_NULL)
    nominal_offset_minutes = models.PositiveIntegerField(null=True, blank=True)
    nominal_offset_months = models.PositiveSmallIntegerField(null=True, blank=True)
    actual_offset_minutes = models.IntegerField(null=True, blank=True)
    actual_offset_months = models.SmallIntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "time series"
        constraints = [replication_constraint("timeseries")]

    def __str__(self):
        return self.name or f"Timeseries #{self.pk}"

    def clean(self):
        offsets = (
            self.nominal_offset_minutes,
            self.nominal_offset_months,
            self.actual_offset_minutes,
            self.actual_offset_months,
        )
        if self.time_step_id is None:
            if any(value is not None for value in offsets):
                raise ValidationError("A time series without a time step has no offsets.")
            return
        if self.actual_offset_minutes is None or self.actual_offset_months is None:
            raise ValidationError(
                "A time series with a time step needs actual_offset_minutes and "
                "actual_offset_months."
            )
        if (self.nominal_offset_minutes is None) != (self.nominal_offset_months is None):
            raise ValidationError("nominal_offset_minutes and nominal_offset_months go together.")


# --- Personal data: never served, never replicated --------------------------------


class UserProfile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    fname = models.CharField(max_length=30, blank=True, verbose_name="first name")
    lname = models.CharField(max_length=30, blank=True, verbose_name="last name")
    address = models.CharField(max_length=100, blank=True)
    organization = models.CharField(max_length=100, blank=True)
    email_is_public = models.BooleanField(default=False)

    def __str__(self):
        return f"Profile of {self.user}"


# --- Time-series records: the bulk of the data, not a served model ------------------------


class Record(models.Model):
    """One value of a time series: tens of millions of rows, growing every day.

    The natural key ``(timeseries, timestamp)`` is the primary key: on PostgreSQL its
    index serves the range reads of a series and the appends at its end, and no
    surrogate key (8 bytes a row, and a second index) is needed. Records are not
    served or synced as a model but through their own endpoints (``api.records``)
    and ``dbsync.engine.records``.
    """

    pk = models.CompositePrimaryKey("timeseries", "timestamp")
    # The primary key's index leads with timeseries_id: a second index would be waste.
    timeseries = models.ForeignKey(Timeseries, on_delete=models.CASCADE, db_index=False)
    timestamp = models.DateTimeField()
    value = models.FloatField(null=True, blank=True, help_text="Empty when missing.")
    flags = models.TextField(blank=True, help_text="Space-separated flags, e.g. 'MISS RANGE'.")

    class Meta:
        ordering = ("timeseries", "timestamp")

    def __str__(self):
        return f"{self.timeseries_id} {self.timestamp:%Y-%m-%d %H:%M}"


class RecordsSummary(models.Model):
    """Count, period and checksum of a time series' records, kept by the database.

    On PostgreSQL, triggers on the records table keep it in step with every insert,
    update, delete and truncation, in the writing transaction (migrations 0002, 0003), so
    that the API serves the summary of every series without reading every record
    (``api.records``). Elsewhere it stays empty, and the API computes the summary.
    """

    timeseries = models.OneToOneField(
        Timeseries,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="records_summary",
        verbose_name="time series",
    )
    count = models.BigIntegerField(default=0, verbose_name="records")
    start = models.DateTimeField(null=True, blank=True, verbose_name="first record")
    end = models.DateTimeField(null=True, blank=True, verbose_name="last record")
    checksum = models.DecimalField(
        max_digits=40,
        decimal_places=0,
        default=0,
        verbose_name="checksum",
        help_text="The sum of the records' hashes (the API serves it modulo 2**64).",
    )
    changed = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name="changed",
        help_text="When the records last changed (the server's clock, set by the triggers); "
        "the API's records-summary?changed_after lists the series changed after a moment.",
    )

    class Meta:
        verbose_name = "records summary"
        verbose_name_plural = "records summaries"
        # records-summary?changed_after reads the changed series by it, not every series.
        indexes = [models.Index(fields=["changed"], name="hcore_summary_changed")]

    def __str__(self):
        return f"Records of time series {self.timeseries_id}: {self.count}"


class RecordsSyncState(models.Model):
    """What the last records sync installed for a replicated time series.

    The remote's count, period and checksum of the records as they were installed
    here, so that the next sync compares them with the remote's summary without
    reading the local records, and fetches only what is new. Written in the same
    transaction as the records; never served.
    """

    timeseries = models.OneToOneField(
        Timeseries,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="records_sync_state",
        verbose_name="time series",
    )
    count = models.BigIntegerField(
        verbose_name="records", help_text="Number of records installed from the remote."
    )
    start = models.DateTimeField(
        null=True, blank=True, verbose_name="first record", help_text="Timestamp of the first."
    )
    end = models.DateTimeField(
        null=True, blank=True, verbose_name="last record", help_text="Timestamp of the last."
    )
    checksum = models.CharField(
        max_length=16,
        verbose_name="checksum",
        help_text="The remote's checksum of these records (see api.records).",
    )
    synced_at = models.DateTimeField(verbose_name="synced at", help_text="When installed.")

    class Meta:
        verbose_name = "records sync state"
        verbose_name_plural = "records sync states"

    def __str__(self):
        return f"Records of time series {self.timeseries_id}: {self.count}"
