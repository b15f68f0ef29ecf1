#!/usr/bin/env bash
# The postgres image runs this once, on an empty data volume, as POSTGRES_USER (the
# only superuser): it makes dbsync's database and its two roles (dbsync-roles.psql says
# which may do what). On an existing server run the same file by hand (docs/production.md),
# or this script with PGHOST/PGPORT set: psql reads them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${DBSYNC_DB_OWNER_PASSWORD:?set DBSYNC_DB_OWNER_PASSWORD}"
: "${DBSYNC_DB_WEB_PASSWORD:?set DBSYNC_DB_WEB_PASSWORD}"
psql --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    --file "$here/dbsync-roles.psql"
