"""Keep ``last_modified`` true when only many-to-many links change.

``auto_now`` covers ``save()``; a change of links never calls ``save()`` on the
object, yet an incremental sync must see it. Only the object whose dump carries
the links (the side that declares the field) changes, and links to user accounts,
which are never served, change nothing a syncer sees.
"""

from django.db.models.signals import m2m_changed
from django.dispatch import receiver
from django.utils import timezone

from .models import ReplicatedModel

# pre_clear -> post_clear: Django gives no pk_set on a clear, so remember it.
_CLEARING = {}


def _declaring_field(sender):
    """The ManyToManyField whose ``through`` is ``sender`` (None if not ours)."""
    for field in sender._meta.get_fields():
        if field.is_relation and field.many_to_one:
            model = field.related_model
            for m2m in model._meta.local_many_to_many:
                if m2m.remote_field.through is sender:
                    return m2m
    return None


@receiver(m2m_changed)
def touch_on_m2m_change(sender, instance, action, reverse, model, pk_set, **kwargs):
    field = _declaring_field(sender)
    if field is None or not issubclass(field.model, ReplicatedModel):
        return
    if field.related_model._meta.app_label == "auth":
        return
    if action == "pre_clear" and reverse:
        # The declaring objects that lose their link to ``instance``.
        _CLEARING[(sender, instance.pk)] = set(
            sender.objects.filter(**{field.m2m_reverse_field_name(): instance.pk}).values_list(
                field.m2m_field_name(), flat=True
            )
        )
        return
    if action not in {"post_add", "post_remove", "post_clear"}:
        return
    if not reverse:
        owners = {instance.pk}
    elif action == "post_clear":
        owners = _CLEARING.pop((sender, instance.pk), set())
    else:
        owners = set(pk_set or ())
    if owners:
        field.model._base_manager.filter(pk__in=owners).update(last_modified=timezone.now())
