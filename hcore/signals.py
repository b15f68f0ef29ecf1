"""Keep ``last_modified`` true when only many-to-many links change.

``auto_now`` covers ``save()``; a change of links never calls ``save()`` on the
object, yet an incremental sync must see it.
"""

from django.db.models.signals import m2m_changed
from django.dispatch import receiver
from django.utils import timezone

from .models import ReplicatedModel


@receiver(m2m_changed)
def touch_on_m2m_change(sender, instance, action, reverse, model, pk_set, **kwargs):
    if action not in {"post_add", "post_remove", "post_clear"}:
        return
    now = timezone.now()
    if isinstance(instance, ReplicatedModel) or hasattr(instance, "last_modified"):
        type(instance)._base_manager.filter(pk=instance.pk).update(last_modified=now)
    # Seen from the other side (reverse), the objects whose links changed are pk_set.
    if pk_set and issubclass(model, ReplicatedModel):
        model._base_manager.filter(pk__in=pk_set).update(last_modified=now)
