"""System checks of the API's routes."""

from django.apps import apps
from django.core import checks

from protocol.legacy import clashes


@checks.register(checks.Tags.urls)
def check_legacy_names(app_configs=None, **kwargs):
    """api.E001: a 2010 URL name (``/api/<ModelName>/``, ``/api/tsdata/``) equal to an
    installed app's label would make ``/api/<x>/<y>/`` mean two things."""
    found = clashes(config.label for config in apps.get_app_configs())
    return [
        checks.Error(
            f"The 2010 API name {name!r} equals an installed app's label: "
            f"/api/{name}/<id>/ and /api/<app>/<model>/ would clash.",
            hint="Rename the app, or map the 2010 name otherwise in protocol/legacy.py.",
            id="api.E001",
        )
        for name in found
    ]
