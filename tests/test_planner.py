"""Planning: which models, in which order, and what cannot be planned."""

import pytest

from dbsync.engine.errors import PlanError
from dbsync.engine.install import deletion_allowance, validate_max_delete
from dbsync.engine.planner import label, make_plan


def position(plan):
    return {label(m): i for i, m in enumerate(plan.models)}


def test_every_served_model_is_planned_and_userprofile_never():
    plan = make_plan("hcore")
    assert len(plan.models) == 26
    assert "hcore.userprofile" not in plan.labels


def test_parents_and_not_null_targets_come_first():
    order = position(make_plan("hcore"))
    for before, after in [
        ("hcore.gentity", "hcore.gpoint"),
        ("hcore.gpoint", "hcore.station"),
        ("hcore.lentity", "hcore.person"),
        ("hcore.lentity", "hcore.station"),  # Station.owner
        ("hcore.stationtype", "hcore.station"),
        ("hcore.station", "hcore.overseer"),
        ("hcore.person", "hcore.overseer"),
        ("hcore.variable", "hcore.unitofmeasurement"),  # M2M target
        ("hcore.unitofmeasurement", "hcore.timeseries"),
        ("hcore.instrument", "hcore.timeseries"),
    ]:
        assert order[before] < order[after], f"{before} must precede {after}"


def test_the_nullable_cycle_through_gentitys_subclasses_is_broken_not_refused():
    # Gentity -> WaterBasin (nullable) while WaterBasin is a Gentity.
    order = position(make_plan("hcore"))
    assert order["hcore.gentity"] < order["hcore.waterbasin"]


def test_excluding_a_not_null_target_is_refused_naming_both():
    with pytest.raises(PlanError, match=r"hcore.station needs hcore.stationtype"):
        make_plan("hcore", ["StationType"])


def test_excluding_a_model_with_its_dependants_is_fine():
    plan = make_plan("hcore", ["GentityFile", "FileType"])
    assert "hcore.filetype" not in plan.labels and plan.excluded == [
        "hcore.filetype",
        "hcore.gentityfile",
    ]


def test_unknown_app_and_model():
    with pytest.raises(PlanError, match="No application 'nosuchapp'"):
        make_plan("nosuchapp")
    with pytest.raises(PlanError, match="Cannot exclude unknown model"):
        make_plan("hcore", ["Nonsense"])
    # The seed told operators to exclude UserProfile: accepted, and a no-op.
    assert len(make_plan("hcore", ["UserProfile"]).models) == 26


@pytest.mark.parametrize(
    "setting, existing, allowed",
    [
        ("50%", 100, 50),
        # No floor: half of a small table is small, and the last object of a table
        # cannot go without an explicit allowance.
        ("50%", 4, 2),
        ("50%", 1, 0),
        ("10", 1000, 10),
        ("all", 5, float("inf")),
        ("0%", 1000, 0),
    ],
)
def test_deletion_allowance(setting, existing, allowed):
    assert deletion_allowance(setting, existing) == allowed


@pytest.mark.parametrize("value", ["x", "-1", "%", "ten%", "2.5"])
def test_bad_max_delete_values_are_refused(value):
    with pytest.raises(ValueError, match="not a number of objects"):
        validate_max_delete(value)
