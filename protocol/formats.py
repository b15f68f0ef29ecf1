"""What the API writes and a syncer reads, beyond the served schema: the range of a key,
and the framing and checksums of the records' batches (see ``api.records``).

Both sides import these; neither defines them again.
"""

import hashlib
import re
from datetime import UTC, datetime, timedelta

# Keys are PostgreSQL bigints (``original_id`` too): no key of either side is larger.
MAX_KEY = 2**63 - 1

# Record times travel as microseconds since the UNIX epoch (a batch's ``<pk>:<after>``).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The checksum of a set of records: the sum of their 64-bit hashes, modulo 2**64, as 16
# hex digits; the sum of two parts' checksums is the checksum of the whole.
CHECKSUM_MODULUS = 2**64


def format_checksum(total):
    return format(int(total) % CHECKSUM_MODULUS, "016x")


def add_checksums(first, second):
    """The checksum of two parts from theirs (16 hex digits each)."""
    return format_checksum(int(first, 16) + int(second, 16))


ZERO_CHECKSUM = format_checksum(0)

# A record's hash: PostgreSQL's own, in SQL, on a server on PostgreSQL; on SQLite, the
# Python one below. Nonzero seed, so that a missing value (NULL, hashed as 0) and 0.0
# hash differently. Both the API (the trailers and the summary) and --verify (the
# replica's records, ``dbsync.engine.verify.records``) compute it.
RECORD_HASH_SEED = 1
RECORD_HASH_SQL = f'hash_record_extended(row("timestamp", value, flags), {RECORD_HASH_SEED})'


def python_record_hash(timestamp, value, flags):
    """The record hash of servers on SQLite (PostgreSQL's is not available there)."""
    micros = (timestamp - EPOCH) // timedelta(microseconds=1)
    text = f"{micros}|{'' if value is None else repr(float(value))}|{flags}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


# A batch's series: a header line, its CSV lines, and a trailer line, or one "not found".
SERIES_HEADER = "# timeseries {pk} utc_offset={utc_offset}\n"
SERIES_NOT_FOUND = "# timeseries {pk} not found\n"
SERIES_TRAILER = "# end count={count} checksum={checksum} utc_offset={utc_offset}\n"
SERIES_HEADER_LINE = re.compile(
    r"# timeseries (?P<pk>[0-9]+) (?:utc_offset=(?P<utc_offset>-?[0-9]+)|not found)"
)
SERIES_TRAILER_LINE = re.compile(
    r"# end count=(?P<count>[0-9]+) checksum=(?P<checksum>[0-9a-f]{16}) "
    r"utc_offset=(?P<utc_offset>-?[0-9]+)"
)
