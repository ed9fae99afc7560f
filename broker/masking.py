"""Masking in the broker: one Masker per target, and a per-session catalog cache.

Column rules may name ``table.column``; a RowDescription only carries the table's
OID and the column's attribute number. The broker resolves those through the
upstream catalog on a side connection (with the same held credential) and caches
them for the session. A rename in the query (``SELECT email AS e``) does not
escape a column rule, because the source column's name is resolved too.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets as pysecrets
from pathlib import Path

import asyncpg

from broker.pg.codec import parse_row_description
from broker.pg.lineage_step import LineageStep, catalog_key
from jitgate.logs import log
from jitgate.masking import Masker, apply_result_formats
from jitgate.policy import Target

logger = logging.getLogger("jitgate.broker.masking")


MIN_HMAC_KEY_BYTES = 32
# Masking plans a session keeps (see SessionMasker.plan_for); a session that makes more
# distinct results than this starts over, so a hostile client cannot grow it without bound.
PLAN_CACHE_SIZE = 256
# Free text up to this many characters is masked on the event loop (the slowest detector input
# found, "@@@...", costs about 3 ms at this size on a 2-core machine); longer text (an error that
# echoes a client's 100 KB literal) is masked in a worker process (broker/sql_worker.py).
FREE_TEXT_INLINE = 2048
WITHHELD = "[withheld by jitgate: this text could not be masked in time]"


def load_hmac_key(settings, backends) -> bytes:
    """The key behind the hash strategy: a secret reference in production, a local file otherwise."""
    ref = settings.env.get("JITGATE_MASKING_KEY")
    if ref:
        # Every broker reads the same key, so a masked value gets the same token everywhere.
        key = backends.secrets.get(ref)
        if len(key) < MIN_HMAC_KEY_BYTES:
            raise ValueError(f"JITGATE_MASKING_KEY ({ref}) holds {len(key)} bytes; a masking key needs at least "
                             f"{MIN_HMAC_KEY_BYTES} (create one with `openssl rand -base64 48`, docs/deploy.md)")
        return key
    path = Path(settings.keys_dir) / "masking-hmac.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pysecrets.token_bytes(32))
    return path.read_bytes()


class SessionMasker:
    """What the PostgreSQL relay asks: is masking on, a plan per result, masked free text."""

    def __init__(self, masker: Masker, target: Target, backends, owner: str | None = None):
        self.masker = masker
        self.active = masker.active
        self._target = target
        self._backends = backends
        self._tables: dict[int, str] = {}
        self._columns: dict[tuple[int, int], str] = {}
        # Bumped whenever the names above change: a plan cached before does not match after.
        self._catalog_generation = 0
        self._plans: dict[tuple, object] = {}
        self.owner = owner
        self.lineage = LineageStep(owner, catalog_key(target))  # the worker pool is fair between users
        # Lineage matters where a rule could be escaped by an expression (see Masker.follows_lineage).
        self.follows_lineage = masker.follows_lineage

    def mask_text(self, text: str, limit: int | None = None) -> str:
        return self.masker.mask_text(text) if limit is None else self.masker.mask_text(text, limit=limit)

    async def mask_text_off_loop(self, text: str, limit: int | None = None, withheld: str | None = WITHHELD) -> str | None:
        """mask_text that holds the event loop for a few ms at most. When the worker fails it
        answers ``withheld`` (WITHHELD for server text; the recording passes None, and then
        refuses the statement: see broker/session.Session.mask_for_record_off_loop)."""
        if len(text) <= FREE_TEXT_INLINE:
            return self.mask_text(text, limit)
        from broker.sql_worker import WorkerFailed, pool  # noqa: PLC0415
        from jitgate.masking.masker import MAX_FREE_TEXT  # noqa: PLC0415

        cut = MAX_FREE_TEXT if limit is None else limit
        try:
            # Cut as mask_text would (one more character keeps its truncation marker).
            return await pool().run("mask_text", *self.masker.spec, cut, text[: cut + 1], owner=self.owner,
                                    what="text to mask")
        except WorkerFailed as exc:
            log(logger, logging.WARNING, "free text withheld: masking it failed", chars=len(text), reason=str(exc))
            return withheld

    def plan(self, fields, lineage=None):
        """A RowPlan for these fields, using the catalog names already resolved."""
        return self.masker.plan(fields, self._tables, self._columns, lineage)

    def known_plan(self, description: bytes, lineage=None, result_formats: tuple | None = None):
        """What ``plan_for`` would return from its cache, or NOT_PLANNED (the relay's hot path
        then needs no await)."""
        try:
            return self._plans.get((self.masker, self._catalog_generation, description, result_formats, lineage),
                                   NOT_PLANNED)
        except TypeError:
            return NOT_PLANNED

    async def plan_for(self, description: bytes, lineage=None, result_formats: tuple | None = None):
        """The relay's RowPlan (None: nothing to mask) for the DataRows after the RowDescription
        whose payload is ``description`` (``result_formats``: a Bind's codes, when the payload
        answered a Describe of the statement, see ``apply_result_formats``).

        Built once per session for each distinct (payload, formats, lineage, masker, catalog
        generation): everything ``Masker.plan`` reads. The payload holds every column's name,
        source table OID and attribute number, type and format; the lineage (compared by value)
        is what tells ``SELECT lower(email) AS x`` from ``SELECT 'a' AS x``, whose payloads are
        the same; the catalog names of those OIDs only change with the generation. The plan's
        ``changed`` set then spans the session's results, which the relay never reads
        (the agent API, which reports it, plans per query with ``plan``).
        """
        masker = self.masker
        key = (masker, self._catalog_generation, description, result_formats, lineage)
        try:
            found = self._plans.get(key, NOT_PLANNED)
        except TypeError:  # a lineage that cannot be hashed: plan it every time
            key, found = None, NOT_PLANNED
        if found is not NOT_PLANNED:
            return found
        fields = parse_row_description(description)
        await self.resolve({f.table_oid for f in fields})
        if result_formats is not None:
            fields = apply_result_formats(fields, result_formats)
        plan = masker.plan(fields, self._tables, self._columns, lineage)
        if key is not None:  # filed under the catalog it was planned with (resolve may have grown it)
            if len(self._plans) >= PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[(masker, self._catalog_generation, description, result_formats, lineage)] = plan
        return plan

    async def follow(self, sql: str, fetch=None) -> list:
        """The lineage of each statement in ``sql`` (``fetch``: the caller's catalog connection;
        default: a side connection with the held credential)."""
        if not self.follows_lineage:
            return []
        if fetch is not None:
            return await self.lineage.follow(sql, fetch)
        conn = None

        async def side_fetch(query: str) -> list[tuple]:
            nonlocal conn
            if conn is None:
                conn = await self._connect()
            return [tuple(row) for row in await conn.fetch(query)]

        try:
            return await self.lineage.follow(sql, side_fetch)
        except Exception as exc:  # noqa: BLE001 - no catalog: fail closed for this statement
            log(logger, logging.WARNING, "lineage catalog lookup failed", error=type(exc).__name__)
            from jitgate.masking.lineage import StatementLineage

            return [StatementLineage(unknown="the gateway could not read the target's catalog")]
        finally:
            if conn is not None:
                await conn.close()

    async def _connect(self):
        target = self._target
        # Off the event loop: a Secret Manager reference is a network call.
        password = (await asyncio.to_thread(self._backends.secrets.get, target.credential)).decode()
        ssl = None if target.tls == "disable" else ("require" if target.tls in ("require", "verify-full") else "prefer")
        return await asyncpg.connect(host=target.host, port=target.port, user=target.username, password=password,
                                     database=target.database, ssl=ssl, timeout=10)

    def plan_copy(self, *args, **kwargs):
        return self.masker.plan_copy(*args, **kwargs)

    async def copy_source(self, stmt):
        """(fields, table names, column names) of what a COPY TO statement copies, read on a side
        connection: the table's columns from the catalog, or a COPY query's columns from a
        Describe (nothing runs). ``MaskingRefused`` when the gateway cannot see them."""
        from pglast.stream import RawStream

        from broker.pg.codec import FieldDescription
        from broker.pg.lineage_step import _ident
        from jitgate.masking import MaskingRefused

        try:
            conn = await self._connect()
        except Exception as exc:  # noqa: BLE001 - no catalog, no COPY under masking
            log(logger, logging.WARNING, "COPY catalog lookup failed", error=type(exc).__name__)
            raise MaskingRefused("the gateway could not read the target's catalog to mask this COPY; retry later") from None
        try:
            if stmt.query is not None:
                try:
                    prepared = await conn.prepare(RawStream()(stmt.query))
                except asyncpg.PostgresError as exc:
                    raise MaskingRefused(f"the gateway cannot describe this COPY's query ({exc.sqlstate}: {exc}); "
                                         "a temporary table is not visible to it") from None
                return [FieldDescription(a.name, 0, 0, a.type.oid, -1, -1, 0) for a in prepared.get_attributes()], {}, {}
            relation = stmt.relation
            ident = ".".join(_ident(p) for p in ([relation.schemaname] if relation.schemaname else []) + [relation.relname])
            rows = await conn.fetch(
                "SELECT c.oid, n.nspname::text, c.relname::text, a.attnum, a.attname::text, a.atttypid, a.atttypmod "
                "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' "
                "ORDER BY a.attnum", ident)
        finally:
            await conn.close()
        if not rows:
            raise MaskingRefused(f"relation {ident} is not visible to the gateway (a temporary table?), so its COPY "
                                 "cannot be masked; SELECT from it instead")
        by_name = {row["attname"]: row for row in rows}
        wanted = [c.sval for c in stmt.attlist] if stmt.attlist else [row["attname"] for row in rows]
        missing = [name for name in wanted if name not in by_name]
        if missing:
            raise MaskingRefused(f"COPY names columns the gateway does not see: {', '.join(missing)}")
        oid = rows[0]["oid"]
        fields = [FieldDescription(name, oid, by_name[name]["attnum"], by_name[name]["atttypid"], -1,
                                   by_name[name]["atttypmod"], 0) for name in wanted]
        tables = {oid: f"{rows[0]['nspname']}.{rows[0]['relname']}"}
        columns = {(oid, row["attnum"]): row["attname"] for row in rows}
        return fields, tables, columns

    async def resolve(self, oids: set[int]) -> None:
        missing = sorted(o for o in oids if o and o not in self._tables)
        if not missing:
            return
        try:
            conn = await self._connect()
        except Exception as exc:  # the plan then masks by name only, and NULLs what it cannot place
            log(logger, logging.WARNING, "catalog lookup failed", error=type(exc).__name__)
            for oid in missing:
                self._tables.setdefault(oid, "")
            self._catalog_generation += 1
            return
        try:
            rows = await conn.fetch(
                "SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = ANY($1::oid[])", missing)
            for row in rows:
                self._tables[row["oid"]] = f"{row['nspname']}.{row['relname']}"
            cols = await conn.fetch(
                "SELECT attrelid, attnum, attname FROM pg_attribute WHERE attrelid = ANY($1::oid[]) AND attnum > 0",
                missing)
            for row in cols:
                self._columns[(row["attrelid"], row["attnum"])] = row["attname"]
            for oid in missing:
                self._tables.setdefault(oid, "")
        finally:
            self._catalog_generation += 1
            await conn.close()


NOT_PLANNED = object()  # known_plan: no plan kept for these


def install(pg, settings, backends) -> None:
    key = load_hmac_key(settings, backends)
    cache: dict[str, tuple[str, Masker]] = {}

    def factory(target: Target, principal) -> SessionMasker | None:
        config_key = target.masking.model_dump_json()
        found = cache.get(id(target).__str__())
        if found is None or found[0] != config_key:
            found = (config_key, Masker(target.masking, key))
            cache[id(target).__str__()] = found
        masker = found[1]
        if not masker.active:
            return None
        return SessionMasker(masker, target, backends, owner=getattr(principal, "username", None))

    pg.masker_factory = factory
