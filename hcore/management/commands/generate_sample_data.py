"""``manage.py generate_sample_data``: a seeded, realistic Enhydris data set."""

import argparse

from django.core.management.base import BaseCommand

from hcore.management.sample_data import SampleOptions, generate


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give 0 or more.")
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a number of 0 or more.")
    return value


class Command(BaseCommand):
    help = (
        "Add a realistic Enhydris data set (stations with their instruments, time series, "
        "events, files, records…) for demos, tests and benchmarks. The same seed gives the same "
        "data on an empty database; on one with data, local lookups are reused and the "
        "rest is added. One transaction."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--stations", type=non_negative_int, default=20, help="Stations (default 20)."
        )
        per_station = (
            ("timeseries", 2, "Time series"),
            ("instruments", 1, "Instruments"),
            ("events", 1, "Events"),
            ("files", 0, "Files (written to the default storage)"),
        )
        for name, default, what in per_station:
            parser.add_argument(
                f"--{name}-per-station",
                type=non_negative_float,
                default=default,
                help=f"{what} per station, on average; a fraction such as 0.3 gives one "
                f"to 30%% of the stations (default {default}).",
            )
        parser.add_argument(
            "--records-per-series",
            type=non_negative_int,
            default=0,
            help="Records of every time series: 10-minute values up to 2025-12-31 23:50 UTC "
            "(default 0).",
        )
        parser.add_argument(
            "--seed",
            type=int,
            default=1,
            help="Seed of the random generator; the same seed gives the same data (default 1).",
        )

    def handle(self, *args, **options):
        self.verbosity = options["verbosity"]
        sample_options = SampleOptions(
            stations=options["stations"],
            timeseries_per_station=options["timeseries_per_station"],
            instruments_per_station=options["instruments_per_station"],
            events_per_station=options["events_per_station"],
            files_per_station=options["files_per_station"],
            records_per_series=options["records_per_series"],
            seed=options["seed"],
        )
        result = generate(sample_options, on_step=self.report_step)
        if self.verbosity >= 1:
            self.stdout.write(result.summary(sample_options.seed))

    def report_step(self, name, seconds):
        if self.verbosity >= 2:
            self.stdout.write(f"  {name}: {seconds:.2f} s")
