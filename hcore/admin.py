"""The admin of the Enhydris models, for the operator of an aggregating instance.

Every replicated model shows where each object came from (an "origin" column and
filter: a remote's name, or "local"). Replicated objects are read-only, as the next
sync would overwrite any change, except for fields that are never replicated (a
station's local creator and maintainers). Keys into large tables use autocomplete
widgets; lists fetch what they show in one query.
"""

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.safestring import mark_safe

from dbsync.models import Database

from . import chart
from . import models as m
from . import records as r

REPLICATION_FIELDS = ("origin", "original_id", "last_modified")


def is_replicated(obj):
    return obj is not None and obj.original_db_id is not None


class OriginFilter(admin.SimpleListFilter):
    title = "origin"
    parameter_name = "origin"
    LOCAL = "local"

    def lookups(self, request, model_admin):
        remotes = Database.objects.values_list("pk", "name")
        return [(self.LOCAL, "local"), *((str(pk), name) for pk, name in remotes)]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        if value == self.LOCAL:
            return queryset.filter(original_db__isnull=True)
        if not value.isdigit():
            return queryset.none()
        return queryset.filter(original_db_id=int(value))


class PageChangeList(ChangeList):
    """A list page that never holds more rows than a page.

    When the count fits on one page Django lists the whole queryset, unsliced; each
    statement sees the latest commits, so a sync committing 100,000 objects between
    the count and the list made one page of them all (a 50 s request).
    """

    def get_results(self, request):
        super().get_results(request)
        limit = self.list_max_show_all if self.show_all else self.list_per_page
        self.result_list = self.result_list[:limit]


class ReplicatedAdmin(admin.ModelAdmin):
    """Origin column and filter, read-only bookkeeping, read-only replicated objects."""

    # Fields that no sync ever touches: editable even on a replicated object.
    local_only_fields = ()
    list_select_related = ()

    def get_changelist(self, request, **kwargs):
        return PageChangeList

    def get_list_select_related(self, request):
        return (*super().get_list_select_related(request), "original_db")

    def get_list_display(self, request):
        return (*super().get_list_display(request), "origin")

    def get_list_filter(self, request):
        return (*super().get_list_filter(request), OriginFilter)

    def get_readonly_fields(self, request, obj=None):
        readonly = (*super().get_readonly_fields(request, obj), *REPLICATION_FIELDS)
        if is_replicated(obj):
            readonly += tuple(
                name
                for name in editable_field_names(self.model)
                if name not in self.local_only_fields and name not in readonly
            )
        return readonly

    def has_change_permission(self, request, obj=None):
        if is_replicated(obj) and not self.local_only_fields:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not is_replicated(obj) and super().has_delete_permission(request, obj)

    @admin.display(description="origin", ordering="original_db__name")
    def origin(self, obj):
        return obj.original_db.name if obj.original_db_id else "local"


def editable_field_names(model):
    return [
        field.name
        for field in model._meta.get_fields()
        if (field.concrete or field.many_to_many)
        and getattr(field, "editable", False)
        and not field.auto_created
    ]


class LookupAdmin(ReplicatedAdmin):
    list_display = ("descr", "descr_alt")
    search_fields = ("descr", "descr_alt")


class GentityAdmin(ReplicatedAdmin):
    """Shared by Gentity and its subclasses."""

    list_display = ("name", "short_name", "water_division", "political_division")
    list_select_related = ("water_division", "political_division")
    search_fields = ("name", "short_name", "name_alt")
    autocomplete_fields = ("water_basin", "water_division", "political_division")


class GentityChildAdmin(ReplicatedAdmin):
    """Objects that hang off a Gentity (events, files, alternative codes)."""

    list_select_related = ("gentity",)
    search_fields = ("gentity__name", "gentity__short_name")
    autocomplete_fields = ("gentity",)


# --- lookups -----------------------------------------------------------------------------

for lookup in (m.EventType, m.GentityAltCodeType, m.InstrumentType, m.StationType, m.Variable):
    admin.site.register(lookup, LookupAdmin)


@admin.register(m.FileType)
class FileTypeAdmin(LookupAdmin):
    list_display = ("descr", "mime_type")
    list_filter = ("mime_type",)
    search_fields = ("descr", "descr_alt", "mime_type")


@admin.register(m.UnitOfMeasurement)
class UnitOfMeasurementAdmin(LookupAdmin):
    list_display = ("descr", "symbol", "variable_list")
    list_filter = ("variables",)
    search_fields = ("descr", "descr_alt", "symbol")
    filter_horizontal = ("variables",)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("variables")

    @admin.display(description="variables")
    def variable_list(self, obj):
        return ", ".join(str(variable) for variable in obj.variables.all())


@admin.register(m.TimeStep)
class TimeStepAdmin(LookupAdmin):
    list_display = ("descr", "length_minutes", "length_months")


@admin.register(m.TimeZone)
class TimeZoneAdmin(ReplicatedAdmin):
    list_display = ("code", "utc_offset")
    search_fields = ("code",)


# --- persons and organizations ---------------------------------------------------------


@admin.register(m.Lentity)
class LentityAdmin(ReplicatedAdmin):
    list_display = ("__str__", "kind", "remarks")
    list_select_related = ("person", "organization")
    search_fields = (
        "person__last_name",
        "person__first_name",
        "organization__name",
        "organization__acronym",
    )

    @admin.display(description="kind")
    def kind(self, obj):
        return "person" if hasattr(obj, "person") else "organization"


@admin.register(m.Person)
class PersonAdmin(ReplicatedAdmin):
    list_display = ("last_name", "first_name", "initials")
    search_fields = ("last_name", "first_name", "last_name_alt", "first_name_alt")


@admin.register(m.Organization)
class OrganizationAdmin(ReplicatedAdmin):
    list_display = ("name", "acronym")
    search_fields = ("name", "acronym", "name_alt", "acronym_alt")


# --- geography -------------------------------------------------------------------------

admin.site.register(m.Gentity, GentityAdmin)


@admin.register(m.Gpoint)
class GpointAdmin(GentityAdmin):
    list_display = ("name", "short_name", "abscissa", "ordinate", "altitude")


@admin.register(m.Gline)
class GlineAdmin(GentityAdmin):
    list_display = ("name", "gpoint1", "gpoint2", "length")
    list_select_related = ("gpoint1", "gpoint2")
    autocomplete_fields = (*GentityAdmin.autocomplete_fields, "gpoint1", "gpoint2")


@admin.register(m.Garea)
class GareaAdmin(GentityAdmin):
    list_display = ("name", "short_name", "area")


@admin.register(m.WaterDivision)
class WaterDivisionAdmin(GentityAdmin):
    list_display = ("name", "short_name", "area")


@admin.register(m.WaterBasin)
class WaterBasinAdmin(GentityAdmin):
    list_display = ("name", "parent", "water_division", "area")
    list_select_related = ("parent", "water_division")
    list_filter = ("water_division",)
    autocomplete_fields = (*GentityAdmin.autocomplete_fields, "parent")


@admin.register(m.PoliticalDivision)
class PoliticalDivisionAdmin(GentityAdmin):
    list_display = ("name", "code", "parent")
    list_select_related = ("parent",)
    search_fields = (*GentityAdmin.search_fields, "code")
    autocomplete_fields = (*GentityAdmin.autocomplete_fields, "parent")


# --- stations and what hangs off them ---------------------------------------------------


class OverseerInline(admin.TabularInline):
    model = m.Overseer
    fields = ("person", "is_current", "start_date", "end_date")
    autocomplete_fields = ("person",)
    extra = 0

    # The overseers of a replicated station come with it from its remote.
    def has_add_permission(self, request, obj=None):
        return not is_replicated(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return not is_replicated(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not is_replicated(obj) and super().has_delete_permission(request, obj)


@admin.register(m.Station)
class StationAdmin(GentityAdmin):
    list_display = ("name", "short_name", "owner", "type", "is_active", "is_automatic")
    list_select_related = ("owner__person", "owner__organization", "type")
    list_filter = ("type", "is_active", "is_automatic", "water_division")
    autocomplete_fields = (
        *GentityAdmin.autocomplete_fields,
        "owner",
        "creator",
        "maintainers",
    )
    inlines = (OverseerInline,)
    local_only_fields = ("creator", "maintainers")


@admin.register(m.Overseer)
class OverseerAdmin(ReplicatedAdmin):
    list_display = ("person", "station", "is_current", "start_date", "end_date")
    list_select_related = ("person", "station")
    list_filter = ("is_current",)
    search_fields = ("person__last_name", "station__name", "station__short_name")
    autocomplete_fields = ("station", "person")


@admin.register(m.Instrument)
class InstrumentAdmin(ReplicatedAdmin):
    list_display = ("name", "station", "type", "manufacturer", "model", "is_active")
    list_select_related = ("station", "type")
    list_filter = ("type", "is_active")
    search_fields = ("name", "manufacturer", "model", "station__name", "station__short_name")
    autocomplete_fields = ("station",)


@admin.register(m.Timeseries)
class TimeseriesAdmin(ReplicatedAdmin):
    list_display = (
        "name",
        "gentity",
        "variable",
        "unit_of_measurement",
        "time_step",
        "time_zone",
    )
    list_select_related = ("gentity", "variable", "unit_of_measurement", "time_step", "time_zone")
    list_filter = ("variable", "time_step", "time_zone")
    search_fields = ("name", "gentity__name", "gentity__short_name")
    autocomplete_fields = ("gentity", "instrument")
    readonly_fields = ("records",)

    def get_urls(self):
        view = self.admin_site.admin_view(self.chart_view)
        opts = self.model._meta
        name = f"{opts.app_label}_{opts.model_name}_chart"
        return [path("<int:object_id>/chart/", view, name=name), *super().get_urls()]

    @admin.display(description="records")
    def records(self, obj):
        """Count, period and a chart of the values (an inline SVG)."""
        if obj is None or obj.pk is None:
            return "—"
        return records_summary(obj, chart_url=chart_url(obj))

    def chart_view(self, request, object_id):
        """The chart of a series on a page of its own, larger."""
        series = get_object_or_404(
            self.get_queryset(request).select_related(
                "variable", "unit_of_measurement", "time_zone", "time_step"
            ),
            pk=object_id,
        )
        if not self.has_view_or_change_permission(request, series):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": series,
            "title": f"Chart of {series}",
            "summary": records_summary(series, width=1100, height=440),
        }
        return TemplateResponse(request, "admin/hcore/timeseries/chart.html", context)


def chart_url(series):
    return reverse("admin:hcore_timeseries_chart", args=(series.pk,))


def records_summary(series, chart_url=None, **size):
    overview = r.overview(series, columns=size.get("width", chart.WIDTH) - chart.PLOT_MARGIN)
    svg = r.render(series, overview, **size) if overview.count else ""
    state = m.RecordsSyncState.objects.filter(timeseries=series).first()
    return render_to_string(
        "admin/hcore/timeseries/records.html",
        {
            "overview": overview,
            "series": series,
            "state": state,
            # hcore.chart escapes every text it writes.
            "svg": mark_safe(svg),
            "chart_url": chart_url,
            "gap_factor": r.USUAL_SPACING_FACTOR,
        },
    )


@admin.register(m.GentityAltCode)
class GentityAltCodeAdmin(GentityChildAdmin):
    list_display = ("value", "type", "gentity")
    list_select_related = ("type", "gentity")
    list_filter = ("type",)
    search_fields = ("value", *GentityChildAdmin.search_fields)


@admin.register(m.GentityFile)
class GentityFileAdmin(GentityChildAdmin):
    list_display = ("descr", "gentity", "file_type", "date", "content")
    list_select_related = ("gentity", "file_type")
    list_filter = ("file_type",)
    search_fields = ("descr", *GentityChildAdmin.search_fields)


@admin.register(m.GentityEvent)
class GentityEventAdmin(GentityChildAdmin):
    list_display = ("date", "type", "gentity", "user")
    list_select_related = ("type", "gentity")
    list_filter = ("type",)
    search_fields = ("user", "report", *GentityChildAdmin.search_fields)
    date_hierarchy = "date"


# --- personal data: local, never served, never replicated ---------------------------------


@admin.register(m.UserProfile)
class UserProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "fname", "lname", "organization", "email_is_public")
    list_select_related = ("user",)
    list_filter = ("email_is_public",)
    search_fields = ("user__username", "fname", "lname", "organization")
    autocomplete_fields = ("user",)
