"""A BI client not written by us: the ADBC Flight SQL driver (PyPI
`adbc-driver-flightsql`) against a running Quiver. Used by tests/bi.rs.

    python3 adbc_client.py grpc://127.0.0.1:PORT TOKEN USER PASSWORD

Prints one JSON object: what the driver saw browsing and querying, each
query's rows as lists, and the errors of what it must not see.
"""

import json
import sys

import adbc_driver_flightsql.dbapi as flight_sql
from adbc_driver_flightsql import DatabaseOptions

uri, token, user, password = sys.argv[1:5]
HEADER = DatabaseOptions.RPC_CALL_HEADER_PREFIX.value


def rows(cur, sql, params=None):
    if params is None:
        cur.execute(sql)
    else:
        cur.execute(sql, parameters=params)
    table = cur.fetch_arrow_table()
    return {
        "columns": table.column_names,
        "types": [str(t) for t in table.schema.types],
        "rows": [list(r.values()) for r in table.to_pylist()],
    }


def error_of(cur, sql):
    try:
        cur.execute(sql)
        cur.fetch_arrow_table()
    except Exception as e:  # the driver's error type varies by version
        return str(e)
    return None


out = {}

# 1. A bearer token that opens workspace `shop` only.
with flight_sql.connect(
    uri, db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}
) as conn:
    info = conn.adbc_get_info()
    out["vendor_name"] = info.get("vendor_name")
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    out["catalogs"] = sorted(o["catalog_name"] for o in objects)
    out["schemas"] = sorted(
        s["db_schema_name"] for o in objects for s in (o["catalog_db_schemas"] or [])
    )
    out["tables"] = sorted(
        f'{s["db_schema_name"]}.{t["table_name"]}:{t["table_type"]}'
        for o in objects
        for s in (o["catalog_db_schemas"] or [])
        for t in (s["db_schema_tables"] or [])
    )
    out["events_columns"] = [
        f.name for f in conn.adbc_get_table_schema("events", db_schema_filter="shop")
    ]
    out["table_types"] = sorted(conn.adbc_get_table_types())
    with conn.cursor() as cur:
        out["by_channel"] = rows(
            cur,
            "SELECT channel, count(*) AS n FROM events GROUP BY channel ORDER BY channel",
        )
        out["prepared_pos"] = rows(
            cur, "SELECT count(*) AS n FROM events WHERE channel = $1", ("pos",)
        )
        out["prepared_purchase"] = rows(
            cur,
            "SELECT count(*) AS n FROM events WHERE event_type = $1 AND channel <> $2",
            ("purchase", "pos"),
        )
        out["segment_join"] = rows(
            cur,
            "SELECT e.event_type, count(*) AS n FROM events e "
            "JOIN segment('skincare_lover') s ON e.person_id = s.person_id "
            "GROUP BY 1 ORDER BY 1",
        )
        out["in_segment"] = rows(
            cur,
            "SELECT count(*) AS n FROM persons "
            "WHERE in_segment(person_id, 'miniprogram_user')",
        )
        out["person_tags"] = rows(
            cur,
            "SELECT tag, count(*) AS n FROM person_tags GROUP BY tag ORDER BY tag",
        )
        out["identifiers_sample"] = rows(
            cur, "SELECT kind, value, person_id FROM identifiers ORDER BY kind, value LIMIT 5"
        )
        out["secret_error"] = error_of(cur, "SELECT count(*) FROM secret.events")
        out["ddl_error"] = error_of(cur, "CREATE TABLE t AS SELECT 1")

# 2. Basic auth: the handshake trades user and password for a session token;
#    the user sees every workspace and picks its default by header.
with flight_sql.connect(
    uri,
    db_kwargs={
        "username": user,
        "password": password,
        HEADER + "x-quiver-workspace": "secret",
    },
) as conn:
    with conn.cursor() as cur:
        out["basic_secret"] = rows(cur, "SELECT count(*) AS n FROM events")
        out["basic_shop"] = rows(cur, "SELECT count(*) AS n FROM shop.events")

# 3. A wrong token is refused.
try:
    with flight_sql.connect(
        uri, db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer wrong"}
    ) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetch_arrow_table()
    out["wrong_token_error"] = None
except Exception as e:
    out["wrong_token_error"] = str(e)

print(json.dumps(out, default=str))
