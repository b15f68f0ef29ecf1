"""Strict conversion of a dump's field values to what the local columns take.

Django's ``to_python`` is lenient (a CharField turns a dict into its repr); a sync
must instead refuse a value of the wrong type, so that a remote whose schema or
data is broken cannot write nonsense. Each converter raises ``ValueError`` with a
message that names what was wrong.
"""

import math
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from django.db import connection
from django.utils.dateparse import parse_date, parse_datetime

TEXT_TYPES = {
    "CharField",
    "TextField",
    "FileField",
    "SlugField",
    "EmailField",
    "URLField",
    "FilePathField",
    "ImageField",
    "GenericIPAddressField",
}
INT_TYPES = {
    "IntegerField",
    "SmallIntegerField",
    "BigIntegerField",
    "PositiveIntegerField",
    "PositiveSmallIntegerField",
    "PositiveBigIntegerField",
    "AutoField",
    "BigAutoField",
    "SmallAutoField",
}


def _kind(value):
    return type(value).__name__


def text_converter(field):
    max_length = field.max_length

    def convert(value):
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {_kind(value)}")
        if "\x00" in value:
            raise ValueError("text contains a NUL character")
        if max_length is not None and len(value) > max_length:
            raise ValueError(f"text of {len(value)} characters is longer than {max_length}")
        return value

    return convert


def int_converter(internal_type):
    low, high = connection.ops.integer_field_range(internal_type)

    def convert(value):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"expected an integer, got {_kind(value)}")
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"expected an integer, got {value[:40]!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{value} is out of range")
        return value

    return convert


def float_converter(value):
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number, got {_kind(value)}")
    try:
        result = float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value[:40]!r}") from None
    if math.isnan(result) or math.isinf(result):
        raise ValueError(f"{value!r} is not a finite number")
    return result


def bool_converter(value):
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_kind(value)}")
    return value


def date_converter(value):
    if not isinstance(value, str):
        raise ValueError(f"expected a date, got {_kind(value)}")
    try:
        result = parse_date(value)
    except ValueError:
        result = None
    if result is None:
        raise ValueError(f"expected a date (YYYY-MM-DD), got {value[:40]!r}")
    return result


def datetime_converter(value):
    if not isinstance(value, str):
        raise ValueError(f"expected a date and time, got {_kind(value)}")
    try:
        result = parse_datetime(value)
        if result is None and (day := parse_date(value)) is not None:
            result = datetime(day.year, day.month, day.day)
    except ValueError:
        result = None
    if result is None:
        raise ValueError(f"expected an ISO 8601 date and time, got {value[:40]!r}")
    if result.tzinfo is None:
        result = result.replace(tzinfo=UTC)
    return result


def decimal_converter(value):
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a decimal number, got {_kind(value)}")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"expected a decimal number, got {str(value)[:40]!r}") from None


def generic_converter(field):
    def convert(value):
        try:
            return field.to_python(value)
        except Exception as exc:  # noqa: BLE001 - any failure of to_python is a bad value
            raise ValueError(str(exc)) from None

    return convert


def converter_for(field):
    """A function turning a dump value into a column value for ``field``."""
    convert = value_converter(field)
    null = field.null

    def checked(value):
        if value is None:
            if null:
                return None
            raise ValueError("may not be null")
        return convert(value)

    return checked


def value_converter(field):
    """``converter_for`` without the check of None, for a caller that checks it
    itself (a call less a value, on the install's hot path)."""
    kind = field.get_internal_type()
    if kind in TEXT_TYPES:
        convert = text_converter(field)
    elif kind in INT_TYPES:
        convert = int_converter(kind)
    elif kind == "FloatField":
        convert = float_converter
    elif kind == "BooleanField":
        convert = bool_converter
    elif kind == "DateField":
        convert = date_converter
    elif kind == "DateTimeField":
        convert = datetime_converter
    elif kind == "DecimalField":
        convert = decimal_converter
    else:
        convert = generic_converter(field)
    return convert
