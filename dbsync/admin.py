"""The admin of the remotes and of their sync runs.

Credentials are never sent back to the browser: the password and token fields
are blank on every form and a blank field keeps the stored value, unless the
endpoint (scheme, hostname, IP address, port) changes, which clears them (the
model does; the page says so). A stored secret that cannot be decrypted is
reported on the remote's page, which still opens and takes a new one. Runs are a
record, so they are view-only, but for one action: a run refused by a deletion guard
may have its deletions approved once ("Approve these deletions once",
``runs.service.approve_deletions``). "Sync now" (a button on a remote's page and an
action on the list) queues the same Celery sync as the schedules, through
``start_sync``. "Remove (purge)…" and "Remove (detach)…" offboard a remote after a
confirmation page that lists what would happen, through ``runs.offboarding``, as
``manage.py dbsync_removeremote`` does.
"""

import json
from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Subquery
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince
from django.views.decorators.http import require_POST

from .engine import journal
from .engine.errors import AlreadyRunning, SyncError
from .engine.offboard import refusal as offboard_refusal
from .engine.result import COUNT_KEYS
from .models import Database, SyncRun
from .runs import offboarding, reverts, service, tasks, verification
from .runs.freshness import NEVER, OVERDUE, freshness

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


def sync_permission():
    """The permission that lets a user start a sync, as "app_label.codename".

    ``dbsync.sync_database`` once the model declares it; until then whoever may
    change a remote may sync it.
    """
    declared = {codename for codename, _ in Database._meta.permissions}
    codename = "sync_database" if "sync_database" in declared else "change_database"
    return f"{Database._meta.app_label}.{codename}"


def start_sync(database, started_by="", backup=None):
    """Queue a sync of ``database`` ("Sync now"; ``backup`` True: "Sync now, backing up
    first", whatever ``DBSYNC_TASK_BACKUP`` says); return (level, message) for the user.

    A refusal (the remote is busy: a REFUSED run is recorded) or a failure to queue
    is a message, not an exception.
    """
    try:
        tasks.enqueue_sync(database, trigger="admin", started_by=started_by, backup=backup)
    except AlreadyRunning as exc:
        return messages.WARNING, f"Not syncing {database}: {exc}"
    except SyncError as exc:
        return messages.ERROR, f"Could not sync {database}: {exc}"
    # enqueue_sync returns the task, not the run; the run is this user's newest one.
    run = (
        SyncRun.objects.filter(database=database, trigger="admin", started_by=started_by)
        .order_by("-pk")
        .first()
    )
    if run is None:  # its remote was deleted meanwhile
        return messages.WARNING, f"Queued a sync of {database}, whose run is gone."
    return messages.SUCCESS, f"Queued a sync of {database}: run #{run.pk} ({run.status})."


def start_verify(database, started_by="", repair=False):
    """Queue a verification (or repair) of ``database``: the task runs the command's
    path (``runs.verification.run_verify``); return (level, message) for the user."""
    what = "repair" if repair else "verification"
    try:
        tasks.enqueue_verify(database, trigger="admin", started_by=started_by, repair=repair)
    except SyncError as exc:
        return messages.ERROR, f"Could not queue the {what} of {database}: {exc}"
    return messages.SUCCESS, f"Queued a {what} of {database}; its run appears in Sync runs."


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
        unreadable = self.instance.unreadable_secrets()
        for name in SECRET_FIELDS:
            if name in unreadable and name in self.fields:
                self.fields[
                    name
                ].help_text += (
                    " One is stored but cannot be decrypted (its key is gone): enter it again."
                )
            elif getattr(self.instance, name) and name in self.fields:
                self.fields[name].help_text += (
                    " One is stored; leave empty to keep it. Changing the scheme, hostname, "
                    "IP address or port clears it."
                )

    def clean(self):
        cleaned = super().clean()
        for name in SECRET_FIELDS:
            if cleaned.get(f"clear_{name}"):
                cleaned[name] = ""
            elif cleaned.get(name):
                # Typed in: kept even if the endpoint changes in the same save.
                self.instance.give_secret(name, cleaned[name])
            else:
                cleaned[name] = getattr(self.instance, name)
        return cleaned


@admin.register(Database)
class DatabaseAdmin(admin.ModelAdmin):
    form = DatabaseForm
    list_display = (
        "name",
        "hostname",
        "endpoint",
        "scheme",
        "is_active",
        "last_sync",
        "last_run",
        "last_run_status",
        "last_run_age",
        "fresh",
        "verified",
        "runs",
    )
    list_filter = ("is_active", "removal", "scheme", "api_layout")
    search_fields = ("name", "hostname", "descr")
    readonly_fields = (
        "last_sync",
        "sync_cursor",
        "records_cursor",
        "files_cursor",
        "capture_cursor",
        "remote_identity",
        "removed_at",
        "removal",
        "schedule_pause_note",
    )
    actions = (
        "sync_now",
        "sync_now_with_backup",
        "resume_schedule",
        "remove_purge",
        "remove_detach",
        "verify_now",
        "repair_now",
    )
    fieldsets = fieldsets_for(
        Database,
        [
            (None, ("name", "descr", "is_active")),
            (
                "Connection",
                (
                    "scheme",
                    "hostname",
                    "ip_address",
                    "port",
                    "api_path",
                    "api_layout",
                    "verify_tls",
                ),
            ),
            (
                "Authentication",
                ("username", "password", "clear_password", "token", "clear_token"),
            ),
            ("What to sync, and when", ("app_label", "exclude", "schedule_kind")),
            (
                "Schedule",
                ("interval_minutes", "crontab", "verify_every_days", "schedule_pause_note"),
            ),
            (
                "State",
                (
                    "last_sync",
                    "sync_cursor",
                    "records_cursor",
                    "files_cursor",
                    "capture_cursor",
                    "remote_identity",
                    "removed_at",
                    "removal",
                ),
            ),
        ],
        extra=[*(f"clear_{name}" for name in SECRET_FIELDS), "schedule_pause_note"],
    )

    def get_queryset(self, request):
        # The latest run of each remote, as columns of the one list query.
        # Syncs only: a verification says nothing of the replica's freshness.
        latest = SyncRun.objects.filter(database=OuterRef("pk"), kind=SyncRun.SYNC).order_by(
            "-started_at", "-pk"
        )
        verified = SyncRun.objects.filter(
            database=OuterRef("pk"),
            kind__in=(SyncRun.VERIFY, SyncRun.REPAIR),
            status=SyncRun.SUCCEEDED,
        ).order_by("-pk")
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_run_id=Subquery(latest.values("pk")[:1]),
                last_run_state=Subquery(latest.values("status")[:1]),
                last_run_started=Subquery(latest.values("started_at")[:1]),
                verified_run_id=Subquery(verified.values("pk")[:1]),
                verified_state=Subquery(verified.values("verification__state")[:1]),
                verified_at=Subquery(verified.values("finished_at")[:1]),
            )
        )

    def get_urls(self):
        opts = self.opts
        return [
            path(
                "<path:object_id>/sync-now/",
                self.admin_site.admin_view(self.sync_now_view),
                name=f"{opts.app_label}_{opts.model_name}_sync_now",
            ),
            *super().get_urls(),
        ]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        cleared = getattr(obj, "cleared_secrets", [])
        if cleared:
            what = " and ".join(str(Database._meta.get_field(n).verbose_name) for n in cleared)
            self.message_user(
                request,
                f"The endpoint of {obj} changed, so its stored {what} "
                f"{'were' if len(cleared) > 1 else 'was'} cleared (they were given for the old "
                f"one). Enter {'them' if len(cleared) > 1 else 'it'} again if the new endpoint "
                f"needs {'them' if len(cleared) > 1 else 'it'}.",
                messages.WARNING,
            )

    def has_sync_permission(self, request):
        return request.user.has_perm(sync_permission())

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "GET":
            database = self.get_object(request, unquote(object_id))
            problem = database and database.unreadable_secrets_message()
            if problem:
                self.message_user(request, problem, messages.WARNING)
            if database and database.is_removed:
                self.message_user(request, database.removed_message(), messages.WARNING)
        extra_context = {
            **(extra_context or {}),
            "has_sync_permission": self.has_sync_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def sync_now_view(self, request, object_id):
        return require_POST(self._sync_now)(request, object_id)

    def _sync_now(self, request, object_id):
        if not self.has_sync_permission(request):
            raise PermissionDenied
        database = get_object_or_404(Database, pk=object_id)
        level, message = start_sync(database, started_by=request.user.get_username())
        self.message_user(request, message, level)
        runs = reverse("admin:dbsync_syncrun_changelist")
        return redirect(f"{runs}?database__id__exact={database.pk}")

    @admin.action(description="Sync now", permissions=["sync"])
    def sync_now(self, request, queryset):
        for database in queryset:
            level, message = start_sync(database, started_by=request.user.get_username())
            self.message_user(request, message, level)

    @admin.action(
        description="Sync now, backing up the local database first", permissions=["sync"]
    )
    def sync_now_with_backup(self, request, queryset):
        for database in queryset:
            level, message = start_sync(
                database, started_by=request.user.get_username(), backup=True
            )
            self.message_user(request, message, level)

    def has_offboard_permission(self, request):
        """Offboarding removes a remote: whoever may delete remotes may offboard one."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.delete_{opts.model_name}")

    @admin.action(description="Remove (purge)…", permissions=["offboard"])
    def remove_purge(self, request, queryset):
        return self.offboard(request, queryset, offboarding.PURGE, "remove_purge")

    @admin.action(description="Remove (detach)…", permissions=["offboard"])
    def remove_detach(self, request, queryset):
        return self.offboard(request, queryset, offboarding.DETACH, "remove_detach")

    def offboard(self, request, queryset, mode, action):
        """Show what offboarding the selected remote would do (a confirmation page, as
        Django's delete has); on its POST, do it (``runs.offboarding``, as the command)."""
        if len(queryset) != 1:
            self.message_user(
                request, "Select one remote to offboard at a time.", messages.WARNING
            )
            return None
        database = queryset[0]
        try:
            found = offboarding.survey_remote(database, mode)
        except SyncError as exc:
            self.message_user(request, str(exc), messages.WARNING)
            return None
        refusal = offboard_refusal(database, found)
        if request.POST.get("post") == "yes" and not refusal:
            return self.offboard_confirmed(request, database, mode)
        context = {
            **self.admin_site.each_context(request),
            "title": f"{'Purge' if mode == offboarding.PURGE else 'Detach'} {database.name}",
            "opts": self.opts,
            "database": database,
            "mode": mode,
            "action": action,
            "lines": found.lines(),
            "refusal": refusal,
            "expected": json.dumps(found.counts(), sort_keys=True),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, "admin/dbsync/database/offboard_confirmation.html", context
        )

    def offboard_confirmed(self, request, database, mode):
        try:
            expected = json.loads(request.POST.get("expected", ""))
        except ValueError:
            expected = None
        if not isinstance(expected, dict):
            self.message_user(
                request,
                f"Not offboarded: the confirmation of {database} did not say what was "
                f"confirmed. Start again from the list.",
                messages.ERROR,
            )
            return None
        try:
            run, _found = offboarding.offboard_remote(
                database,
                mode,
                started_by=request.user.get_username(),
                via="admin",
                expected=expected,
            )
        except SyncError as exc:
            self.message_user(request, f"Not offboarded: {exc}", messages.ERROR)
            return None
        self.message_user(request, run.message, messages.SUCCESS)
        return None

    @admin.action(description="Resume the schedule (paused by a revert)", permissions=["sync"])
    def resume_schedule(self, request, queryset):
        for database in queryset:
            self.message_user(request, reverts.resume_schedule(database), messages.SUCCESS)

    @admin.display(description="schedule paused")
    def schedule_pause_note(self, obj):
        pause = getattr(obj, "schedule_pause", None) if obj.pk else None
        if pause is None:
            return "no"
        return (
            f"since {pause.paused_at:%Y-%m-%d %H:%M} ({pause.reason}); resume it with the "
            f'action "Resume the schedule" on the list of remotes'
        )

    @admin.action(description="Verify the replica against the remote", permissions=["sync"])
    def verify_now(self, request, queryset):
        for database in queryset:
            level, message = start_verify(database, started_by=request.user.get_username())
            self.message_user(request, message, level)

    @admin.action(description="Repair what differs from the remote", permissions=["sync"])
    def repair_now(self, request, queryset):
        for database in queryset:
            level, message = start_verify(
                database, started_by=request.user.get_username(), repair=True
            )
            self.message_user(request, message, level)

    @admin.display(description="verified")
    def verified(self, obj):
        """'verified equal at …' or 'differs: …' (``runs.verification.describe``)."""
        run_id = getattr(obj, "verified_run_id", None)
        if run_id is None:
            return "never verified"
        url = reverse("admin:dbsync_syncrun_change", args=[run_id])
        when = timezone.localtime(obj.verified_at).strftime("%Y-%m-%d %H:%M")
        if obj.verified_state == verification.EQUAL:
            return format_html('<a href="{}">verified equal at {}</a>', url, when)
        return format_html(
            '<a href="{}"><strong style="color: #ba2121">differs (at {})</strong></a>', url, when
        )

    @admin.display(description="address")
    def endpoint(self, obj):
        return f"{obj.address}:{obj.port}"

    @admin.display(description="last run", ordering="last_run_id")
    def last_run(self, obj):
        if obj.last_run_id is None:
            return None
        url = reverse("admin:dbsync_syncrun_change", args=[obj.last_run_id])
        return format_html('<a href="{}">#{}</a>', url, obj.last_run_id)

    @admin.display(description="status", ordering="last_run_state")
    def last_run_status(self, obj):
        return obj.last_run_state

    @admin.display(description="started", ordering="last_run_started")
    def last_run_age(self, obj):
        if obj.last_run_started is None:
            return None
        return f"{timesince(obj.last_run_started, timezone.now())} ago"

    @admin.display(description="freshness")
    def fresh(self, obj):
        """As ``manage.py dbsync_status`` judges it (dbsync.runs.freshness)."""
        last_run = SyncRun(status=obj.last_run_state) if obj.last_run_state else None
        state = freshness(obj, last_run=last_run).state
        if state in (OVERDUE, NEVER):
            return format_html('<strong style="color: #ba2121">{}</strong>', state)
        return state

    @admin.display(description="runs")
    def runs(self, obj):
        url = reverse("admin:dbsync_syncrun_changelist")
        return format_html('<a href="{}?database__id__exact={}">runs</a>', url, obj.pk)


# --- runs -----------------------------------------------------------------------------------


@admin.register(SyncRun)
class SyncRunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "database",
        "kind",
        "status",
        "progress",
        "trigger",
        "started_by",
        "started_at",
        "finished_at",
        "run_duration",
        "run_totals",
    )
    list_display_links = ("id", "database")
    list_filter = ("kind", "status", "trigger", "database")
    list_select_related = ("database",)
    search_fields = ("database__name", "started_by", "message")
    date_hierarchy = "started_at"
    actions = ("approve_deletions", "revert_runs")
    readonly_fields = (
        "run_duration",
        "run_totals",
        "counts_table",
        "error_list",
        "deletions_listing",
        "journal_size",
    )
    fieldsets = fieldsets_for(
        SyncRun,
        [
            # A running run's phase and counts (runs/progress.py) next to its status.
            (
                None,
                (
                    "database",
                    "kind",
                    "status",
                    "progress",
                    "trigger",
                    "started_by",
                    "full",
                    "dry_run",
                ),
            ),
            (
                "Timing",
                ("started_at", "finished_at", "run_duration", "heartbeat", "remote_time"),
            ),
            ("Result", ("run_totals", "counts_table", "error_list", "message", "verification")),
            (
                "Refused deletions",
                (
                    "deletions_listing",
                    "approved_by",
                    "approved_at",
                    "approval_used_by",
                    "approval_used_at",
                ),
            ),
            ("Journal", ("journal", "journal_size", "reverted_at", "reverted_by")),
            (
                "Details",
                (
                    "options",
                    "backup_path",
                    "fetch_plan",
                    "disk_spent",
                    "task_id",
                    "notified_at",
                    "deletions",
                ),
            ),
        ],
        extra=readonly_fields,
    )

    def changelist_view(self, request, extra_context=None):
        # While a run is active the list reloads itself to show its progress.
        active = SyncRun.objects.filter(status__in=SyncRun.ACTIVE).exists()
        return super().changelist_view(request, {**(extra_context or {}), "auto_refresh": active})

    # A record of what happened: nobody adds, edits or deletes it here.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_approve_permission(self, request):
        """Whoever may start a sync may approve a refused run's deletions once."""
        return request.user.has_perm(sync_permission())

    @admin.action(description="Approve these deletions once", permissions=["approve"])
    def approve_deletions(self, request, queryset):
        for run in queryset.select_related("database"):
            try:
                message = service.approve_deletions(run, request.user.get_username())
            except SyncError as exc:
                self.message_user(request, str(exc), messages.WARNING)
            else:
                self.message_user(request, message, messages.SUCCESS)

    def has_revert_permission(self, request):
        """Whoever may start a sync may revert one."""
        return request.user.has_perm(sync_permission())

    @admin.action(
        description="Revert: bring the database back to its state before this run",
        permissions=["revert"],
    )
    def revert_runs(self, request, queryset):
        # Newest first: a later run that changed the same rows must be reverted first.
        for run in queryset.select_related("database").order_by("-pk"):
            try:
                message = reverts.revert_run(run, by=request.user.get_username())
            except SyncError as exc:
                self.message_user(request, str(exc), messages.WARNING)
            else:
                self.message_user(request, message, messages.SUCCESS)

    @admin.display(description="journal size")
    def journal_size(self, obj):
        """What the run's journal holds (rows noted, their bytes), to revert it."""
        if obj.journal != SyncRun.JOURNAL_KEPT or obj.reverted_at is not None:
            return None
        size = journal.size(obj.pk)
        return f"{size['rows']} rows, {size['bytes']} bytes"

    @admin.display(description="would have removed")
    def deletions_listing(self, obj):
        """What a guard refused, in counts, and where the approval stands."""
        counts = (obj.deletions or {}).get("counts")
        if not counts:
            return None
        items = format_html_join("", "<li>{}: {}</li>", sorted(counts.items()))
        if obj.approval_used_at is not None:
            applied = obj.deletions.get("applied")
            state = f"approved by {obj.approved_by}; spent by run #{obj.approval_used_by_id}"
            state += f": {applied}" if applied else ""
        elif obj.approved_at is not None:
            state = f"approved by {obj.approved_by}; the next run of the remote may delete these"
        else:
            state = 'not approved (action "Approve these deletions once" on the list of runs)'
        return format_html("<ul>{}</ul><p>{}</p>", items, state)

    @admin.display(description="duration")
    def run_duration(self, obj):
        duration = obj.duration
        if duration is None and obj.is_active:
            elapsed = round((timezone.now() - obj.started_at).total_seconds())
            return f"{timedelta(seconds=elapsed)} so far"
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
