"""The 2010 web-service layout: ``/api/<ModelName>/``, ``/api/<ModelName>/<id>/`` and
``/api/tsdata/<id>/``, as the Enhydris of 2010 served them.

The one place that maps the 2010 URL names to today's models: the server
(``api.legacy``) routes by it and the syncer of a legacy remote
(``dbsync.engine.legacy``) fetches by it. A 2010 name is the model's class name as
it was then; today's hcore keeps those names (``hcore.models``), so the map is one to
one, but it is written out so that a renamed model cannot silently change a URL.
"""

from protocol.schema import get_served_model

# 2010 URL name -> today's model label. Only served models are routed (user data,
# such as UserProfile, never is: ``legacy_model`` asks ``protocol.schema``).
LEGACY_MODELS = {
    "EventType": "hcore.eventtype",
    "FileType": "hcore.filetype",
    "Garea": "hcore.garea",
    "Gentity": "hcore.gentity",
    "GentityAltCode": "hcore.gentityaltcode",
    "GentityAltCodeType": "hcore.gentityaltcodetype",
    "GentityEvent": "hcore.gentityevent",
    "GentityFile": "hcore.gentityfile",
    "Gline": "hcore.gline",
    "Gpoint": "hcore.gpoint",
    "Instrument": "hcore.instrument",
    "InstrumentType": "hcore.instrumenttype",
    "Lentity": "hcore.lentity",
    "Organization": "hcore.organization",
    "Overseer": "hcore.overseer",
    "Person": "hcore.person",
    "PoliticalDivision": "hcore.politicaldivision",
    "Station": "hcore.station",
    "StationType": "hcore.stationtype",
    "Timeseries": "hcore.timeseries",
    "TimeStep": "hcore.timestep",
    "TimeZone": "hcore.timezone",
    "UnitOfMeasurement": "hcore.unitofmeasurement",
    "Variable": "hcore.variable",
    "WaterBasin": "hcore.waterbasin",
    "WaterDivision": "hcore.waterdivision",
}
# The records of a time series, as text: ``/api/tsdata/<id>/``.
TSDATA = "tsdata"

# A remote's API layout (``dbsync.Database.api_layout``): registered, never guessed.
LAYOUT_CURRENT = "current"
LAYOUT_LEGACY = "legacy"

LEGACY_NAMES = {model_label: name for name, model_label in LEGACY_MODELS.items()}

# Fields of the 2010 schema that today's models left out (hcore.models says why): a
# listing of a server of 2010, or its dumpdata, has them, and a sync ignores them, as
# it ignores the bookkeeping fields and the keys to user accounts.
DROPPED_2010_FIELDS = {"hcore.waterbasin": frozenset({"water_division"})}


def legacy_model(name):
    """The served model of a 2010 URL name (case-sensitive, as the routes are), or None."""
    model_label = LEGACY_MODELS.get(name)
    return get_served_model(model_label) if model_label else None


def legacy_name(model_label):
    """The 2010 URL name of a model label (``hcore.station`` -> ``Station``), or None."""
    return LEGACY_NAMES.get(model_label)


def served_legacy_names():
    """The 2010 names of the models this instance serves, in a stable order."""
    return sorted(name for name in LEGACY_MODELS if legacy_model(name) is not None)


def clashes(app_labels):
    """The 2010 first path segments (model names and ``tsdata``) that equal, ignoring
    case, one of ``app_labels``: then ``/api/<x>/<y>/`` would mean two things."""
    labels = {app_label.lower() for app_label in app_labels}
    return sorted(name for name in [*LEGACY_MODELS, TSDATA] if name.lower() in labels)
