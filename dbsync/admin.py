"""The admin of the remotes and of their sync runs.

Credentials are never sent back to the browser: the password and token fields
are blank on every form and a blank field keeps the stored value. Runs are a
record, so they are view-only.
"""

from datetime import timedelta

from django import forms
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from .models import Database, SyncRun
from .result import COUNT_KEYS

SECRET_FIELDS = ("password", "token")


def fieldsets_for(model, groups, extra=()):
    """``groups`` as admin fieldsets, keeping only the model's fields (and ``extra``
    form fields), with any field not named in a group in a last "Other" fieldset."""
    names = {field.name for field in model._meta.get_fields()} | set(extra)
    named = {name for _, fields in groups for name in fields}
    others = [
        field.name
        for field in model._meta.concrete_fields
        if field.name not in named and field.editable and not field.primary_key
    ]
    fieldsets = [
        (title, {"fields": [name for name in fields if name in names]}) for title, fields in groups
    ]
    if others:
        fieldsets.append(("Other", {"fields": others}))
    return fieldsets


# --- remotes ------------------------------------------------------------------------------


def secret_field(name):
    """A write-only form field for the model field ``name``: never shows what is stored."""
    model_field = Database._meta.get_field(name)
    return forms.CharField(
        required=False,
        max_length=model_field.max_length,
        label=model_field.verbose_name.capitalize(),
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=model_field.help_text,
    )


def clear_field(name):
    verbose_name = Database._meta.get_field(name).verbose_name
    return forms.BooleanField(required=False, label=f"Clear the stored {verbose_name}")


class DatabaseForm(forms.ModelForm):
    """A remote's form; password and token are write-only, blank keeps the stored one."""

    password = secret_field("password")
    clear_password = clear_field("password")
    token = secret_field("token")
    clear_token = clear_field("token")

    class Meta:
        model = Database
        fields = [
            f.name for f in Database._meta.concrete_fields if f.editable and not f.primary_key
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in SECRET_FIELDS:
            if getattr(self.instance, name) and name in self.fields:
                self.fields[name].help_text += " One is stored; leave empty to keep it."

    def clean(self):
        cleaned = super().clean()
        for name in SECRET_FIELDS:
            if cleaned.get(f"clear_{name}"):
                cleaned[name] = ""
            elif not cleaned.get(name):
                cleaned[name] = getattr(self.instance, name)
        return cleaned


@admin.register(Database)
class DatabaseAdmin(admin.ModelAdmin):
    form = DatabaseForm
    list_display = ("name", "hostname", "endpoint", "scheme", "is_active", "last_sync", "runs")
    list_filter = ("is_active", "scheme")
    search_fields = ("name", "hostname", "descr")
    readonly_fields = ("last_sync", "sync_cursor")
    # Admin actions ("Sync now", …) go here, each an @admin.action method.
    actions = ()
    fieldsets = fieldsets_for(
        Database,
        [
            (None, ("name", "descr", "is_active")),
            ("Connection", ("scheme", "hostname", "ip_address", "port", "api_path", "verify_tls")),
            (
                "Authentication",
                ("username", "password", "clear_password", "token", "clear_token"),
            ),
            ("What to sync, and when", ("app_label", "exclude", "schedule_kind")),
            ("Schedule", ("interval_minutes", "crontab")),
            ("State", ("last_sync", "sync_cursor")),
        ],
        extra=[f"clear_{name}" for name in SECRET_FIELDS],
    )

    @admin.display(description="address")
    def endpoint(self, obj):
        return f"{obj.address}:{obj.port}"

    @admin.display(description="runs")
    def runs(self, obj):
        url = reverse("admin:dbsync_syncrun_changelist")
        return format_html('<a href="{}?database__id__exact={}">runs</a>', url, obj.pk)


# --- runs -----------------------------------------------------------------------------------


@admin.register(SyncRun)
class SyncRunAdmin(admin.ModelAdmin):
    list_display = (
        "database",
        "status",
        "trigger",
        "started_at",
        "finished_at",
        "run_duration",
        "run_totals",
    )
    list_filter = ("status", "trigger", "database")
    list_select_related = ("database",)
    search_fields = ("database__name", "started_by", "message")
    date_hierarchy = "started_at"
    actions = ()
    readonly_fields = ("run_duration", "run_totals", "counts_table", "error_list")
    fieldsets = fieldsets_for(
        SyncRun,
        [
            (None, ("database", "status", "trigger", "started_by", "full", "dry_run")),
            (
                "Timing",
                ("started_at", "finished_at", "run_duration", "heartbeat", "remote_time"),
            ),
            ("Result", ("run_totals", "counts_table", "error_list", "message", "progress")),
            ("Details", ("options", "backup_path", "fetch_plan", "task_id", "notified_at")),
        ],
        extra=readonly_fields,
    )

    # A record of what happened: nobody adds, edits or deletes it here.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="duration")
    def run_duration(self, obj):
        duration = obj.duration
        return None if duration is None else timedelta(seconds=round(duration.total_seconds()))

    @admin.display(description="totals")
    def run_totals(self, obj):
        return ", ".join(f"{n} {key}" for key, n in obj.totals().items() if n) or "nothing"

    @admin.display(description="per model")
    def counts_table(self, obj):
        return counts_table(obj.model_counts)

    @admin.display(description="errors")
    def error_list(self, obj):
        if not obj.errors:
            return None
        items = format_html_join("", "<li>{}</li>", ((describe_error(e),) for e in obj.errors))
        return format_html("<ul>{}</ul>", items)


def counts_table(model_counts):
    """Per-model counts as an HTML table: a row per model, a column per count."""
    if not model_counts:
        return None
    keys = {key for counts in model_counts.values() for key in counts}
    columns = [key for key in COUNT_KEYS if key in keys] + sorted(keys - set(COUNT_KEYS))
    header = format_html_join("", "<th>{}</th>", ((name,) for name in ["model", *columns]))
    rows = format_html_join(
        "",
        "<tr><td>{}</td>{}</tr>",
        (
            (label, format_html_join("", "<td>{}</td>", ((counts.get(k, ""),) for k in columns)))
            for label, counts in sorted(model_counts.items())
        ),
    )
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", header, rows)


def describe_error(error):
    """One recorded error (``ObjectProblem.as_dict()`` or plain text) as a line."""
    if isinstance(error, dict) and {"model", "pk", "error"} <= error.keys():
        return f"{error['model']}(pk={error['pk']}): {error['error']}"
    return str(error)
