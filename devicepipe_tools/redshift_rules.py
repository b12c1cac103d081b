"""Redshift rules that every statement the warehouse loader sends must pass, so that DuckDB (the local stand-in)
can no longer accept what Redshift would reject.

Each statement is parsed with sqlglot's Redshift dialect, then checked by small rules, each one a Redshift or
Data API documentation rule (URL beside it). Statement rules look at one statement; batch rules at the
statements one ``BatchExecuteStatement`` runs as one transaction. ``check_batch`` / ``check_statement`` list the
violations; ``guard`` raises ``RuleViolation`` naming the first rule broken. It runs in the unit tests (every
statement the loader builds) and in ``DuckDBWarehouse`` before any translation; the Lambda layer does not need
sqlglot. docs/warehouse-sql.md lists the rules, what cannot be checked statically, and why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import sqlglot
from sqlglot import Token, TokenType, exp
from sqlglot.errors import ParseError

#: "The maximum query statement size is 100 KB" (read as 100,000 bytes of UTF-8, the stricter reading):
#: https://docs.aws.amazon.com/redshift/latest/mgmt/data-api.html#data-api-calling-considerations
MAX_STATEMENT_BYTES = 100_000
#: ``Sqls``: "Array Members: Minimum number of 1 item. Maximum number of 40 items."
#: https://docs.aws.amazon.com/redshift-data/latest/APIReference/API_BatchExecuteStatement.html
MAX_BATCH_STATEMENTS = 40

#: https://docs.aws.amazon.com/redshift/latest/dg/r_pg_keywords.html (usable only as delimited identifiers)
RESERVED_WORDS = frozenset(
    """AES128 AES256 ALL ALLOWOVERWRITE ANALYSE ANALYZE AND ANY ARRAY AS ASC AUTHORIZATION AZ64 BACKUP BETWEEN
    BINARY BLANKSASNULL BOTH BYTEDICT BZIP2 CASE CAST CHECK COLLATE COLUMN CONNECT CONSTRAINT CREATE CREDENTIALS
    CROSS CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER CURRENT_USER_ID DEFAULT DEFERRABLE DEFLATE
    DEFRAG DELTA DELTA32K DESC DISABLE DISTINCT DO ELSE EMPTYASNULL ENABLE ENCODE ENCRYPT ENCRYPTION END EXCEPT
    EXPLICIT FALSE FOR FOREIGN FREEZE FROM FULL GLOBALDICT256 GLOBALDICT64K GRANT GROUP GZIP HAVING IDENTITY
    IGNORE ILIKE IN INITIALLY INNER INTERSECT INTERVAL INTO IS ISNULL JOIN LANGUAGE LEADING LEFT LIKE LIMIT
    LOCALTIME LOCALTIMESTAMP LUN LUNS LZO LZOP MINUS MOSTLY16 MOSTLY32 MOSTLY8 NATURAL NEW NOT NOTNULL NULL NULLS
    OFF OFFLINE OFFSET OID OLD ON ONLY OPEN OR ORDER OUTER OVERLAPS PARALLEL PARTITION PERCENT PERMISSIONS PIVOT
    PLACING PRIMARY RAW READRATIO RECOVER REFERENCES REJECTLOG RESORT RESPECT RESTORE RIGHT SELECT SESSION_USER
    SIMILAR SNAPSHOT SOME SYSDATE SYSTEM START TABLE TAG TDES TEXT255 TEXT32K THEN TIMESTAMP TO TOP TRAILING TRUE
    TRUNCATECOLUMNS UNION UNIQUE UNNEST UNPIVOT USER USING VERBOSE WALLET WHEN WHERE WITH WITHOUT""".split()  # noqa: SIM905 (the page's list, as printed)
)

#: Functions DuckDB runs that Redshift refuses, which the loader's SQL could pick up by accident.
DENIED_FUNCTIONS: dict[str, str] = {
    # Leader-node-only (error when the query references a user table):
    # https://docs.aws.amazon.com/redshift/latest/dg/c_SQL_functions_leader_node_only.html
    **dict.fromkeys(["now", "age", "current_time", "current_timestamp", "localtime", "isfinite"], "leader-node only"),
    # Unsupported PostgreSQL functions that DuckDB has:
    # https://docs.aws.amazon.com/redshift/latest/dg/c_unsupported-postgresql-functions.html
    **dict.fromkeys(
        [
            "string_agg",
            "array_agg",
            "every",
            "generate_series",
            "regexp_matches",
            "regexp_split_to_array",
            "clock_timestamp",
            "transaction_timestamp",
            "format",
            "bit_length",
            "overlay",
            "encode",
            "div",
        ],
        "unsupported PostgreSQL function",
    ),
    # DuckDB's own, absent from Redshift's SQL function reference:
    # https://docs.aws.amazon.com/redshift/latest/dg/c_SQL_functions.html
    **dict.fromkeys(
        [
            "read_json",
            "read_json_auto",
            "read_csv",
            "read_parquet",
            "list_value",
            "list_aggregate",
            "struct_pack",
            "epoch_ms",
            "strftime",
            "strptime",
            "json_extract_string",
            "arg_max",
            "arg_min",
            "make_timestamp",
        ],
        "DuckDB function, not Redshift",
    ),
}

#: COPY options documented as not supported with JSON:
#: https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html#copy-json
_NOT_WITH_JSON = frozenset(
    {"CSV", "DELIMITER", "ESCAPE", "FILLRECORD", "FIXEDWIDTH", "IGNOREBLANKLINES", "NULL", "READRATIO", "REMOVEQUOTES"}
)
#: https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-file-compression.html
_COMPRESSIONS = frozenset({"GZIP", "BZIP2", "LZOP", "ZSTD"})
#: https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-authorization.html
_KEY_AUTH = frozenset({"CREDENTIALS", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN"})


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str
    sql: str

    def __str__(self) -> str:
        return f"Redshift rule {self.rule}: {self.message} (in: {self.sql[:120]!r})"


class RuleViolation(ValueError):
    """Statements Redshift (or the Data API) would refuse; ``rule`` names the first rule broken."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        super().__init__("; ".join(str(v) for v in violations))
        self.violations = list(violations)
        self.rule = violations[0].rule


@dataclass(frozen=True)
class Statement:
    """One statement, parsed: ``tree`` is None where sqlglot keeps it as a bare command (``LOCK``)."""

    sql: str
    tree: exp.Expr | None
    tokens: list[Token] = field(default_factory=list)


@dataclass(frozen=True)
class CopyParts:
    """A COPY statement's target table, FROM path and options (upper-case word -> its string arguments)."""

    table: str
    source: str
    options: dict[str, list[str]]


StatementRule = Callable[[Statement], Iterator[str]]
BatchRule = Callable[[Sequence[Statement]], Iterator[str]]
STATEMENT_RULES: dict[str, StatementRule] = {}
BATCH_RULES: dict[str, BatchRule] = {}


def statement_rule(name: str) -> Callable[[StatementRule], StatementRule]:
    def register(fn: StatementRule) -> StatementRule:
        STATEMENT_RULES[name] = fn
        return fn

    return register


def batch_rule(name: str) -> Callable[[BatchRule], BatchRule]:
    def register(fn: BatchRule) -> BatchRule:
        BATCH_RULES[name] = fn
        return fn

    return register


#: What a statement the warehouse runs can be (anything else parsed, e.g. a bare expression, is not a statement).
_STATEMENTS = (
    exp.Query,
    exp.Create,
    exp.Drop,
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Copy,
    exp.TruncateTable,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
)


_NAME = r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?"
#: Statements sqlglot keeps as bare commands, with the form accepted here: LOCK
#: (https://docs.aws.amazon.com/redshift/latest/dg/r_LOCK.html) and VACUUM (only so that ``one_transaction`` can
#: refuse it in a batch: https://docs.aws.amazon.com/redshift/latest/dg/r_VACUUM_command.html).
_COMMANDS = {
    "LOCK": re.compile(rf"\s*(TABLE\s+)?{_NAME}(\s*,\s*{_NAME})*\s*", re.IGNORECASE),
    "VACUUM": re.compile(rf"\s*(FULL|SORT ONLY|DELETE ONLY|REINDEX|RECLUSTER)?\s*({_NAME})?\s*", re.IGNORECASE),
}


def parse(sql: str) -> Statement:
    """Parse one Redshift statement (raises ``ParseError``). ``LOCK t[, ...]`` is read from its tokens: sqlglot
    has no LOCK node, and LOCK is Redshift SQL (https://docs.aws.amazon.com/redshift/latest/dg/r_LOCK.html)."""
    tokens = sqlglot.tokenize(sql, read="redshift")
    command = tokens[0].text.upper() if tokens else ""
    if command in _COMMANDS:  # the tokenizer keeps the rest as one string
        rest = tokens[1].text if len(tokens) == 2 else ""
        if not _COMMANDS[command].fullmatch(rest):
            raise ParseError(f"{command} takes table names: {sql[:80]!r}")
        return Statement(sql, None, tokens)
    trees = [t for t in sqlglot.parse(sql, read="redshift") if t is not None]
    if len(trees) != 1:
        raise ParseError(f"expected one statement, found {len(trees)}")
    tree = trees[0]
    if not any(isinstance(tree, kind) for kind in _STATEMENTS):
        raise ParseError(f"not a Redshift statement sqlglot understands: {sql[:80]!r}")
    return Statement(sql, tree, tokens)


def copy_parts(sql: str) -> CopyParts:
    """The parts of a ``COPY table FROM 's3://...' option [arg] ...`` statement, read from its tokens (sqlglot
    parses COPY but pairs Redshift's options wrongly)."""
    tokens = sqlglot.tokenize(sql, read="redshift")
    if len(tokens) < 4 or tokens[0].token_type != TokenType.COPY or tokens[3].token_type != TokenType.STRING:
        raise ParseError(f"not a COPY table FROM 'path' statement: {sql[:80]!r}")
    options: dict[str, list[str]] = {}
    word = ""
    for token in tokens[4:]:
        if token.token_type == TokenType.STRING:
            options.setdefault(word, []).append(token.text)
        elif token.token_type != TokenType.ALIAS and token.text.upper() != "FORMAT":  # FORMAT [AS] JSON ...
            word = token.text.upper()
            options.setdefault(word, [])
    return CopyParts(tokens[1].text, tokens[3].text, options)


# --- statement rules -----------------------------------------------------------------------------------------


@statement_rule("statement_size")
def _statement_size(st: Statement) -> Iterator[str]:
    """The Data API refuses a statement over 100 KB (ValidationException: the same call fails every time):
    https://docs.aws.amazon.com/redshift/latest/mgmt/data-api.html#data-api-calling-considerations"""
    size = len(st.sql.encode())
    if size > MAX_STATEMENT_BYTES:
        yield f"{size} bytes, over the Data API's {MAX_STATEMENT_BYTES}-byte statement limit"


@statement_rule("qualify_from_alias")
def _qualify_from_alias(st: Statement) -> Iterator[str]:
    """ "If you're using the QUALIFY clause directly after the FROM clause, the FROM relation name must have an
    alias specified before the QUALIFY clause": https://docs.aws.amazon.com/redshift/latest/dg/r_QUALIFY_clause.html"""
    for select in st.tree.find_all(exp.Select) if st.tree else ():
        directly_after_from = not any(select.args.get(k) for k in ("where", "group", "having"))
        relation = select.args.get("from_") or select.args.get("from")
        if select.args.get("qualify") and directly_after_from and relation:
            last = select.args["joins"][-1].this if select.args.get("joins") else relation.this
            if not last.alias:
                yield f"QUALIFY directly after FROM {last.sql(dialect='redshift')} needs an alias on that relation"


@statement_rule("copy_options")
def _copy_options(st: Statement) -> Iterator[str]:
    """COPY options valid together, as the loader uses COPY (JSON 'auto', GZIP, IAM role, same region):
    - authorization by IAM_ROLE only; it excludes keys and CREDENTIALS:
      https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-authorization.html
    - FORMAT JSON 'auto' (keys matched to lower-case column names), none of the options JSON does not support:
      https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html#copy-json
    - one compression option: https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-file-compression.html
    - no REGION: with REGION "all resources, including a manifest file ... must be located in the specified
      Region", and the loader keeps manifests and objects in the warehouse's region (docs/warehouse-regions.md);
    - MANIFEST names one file; without MANIFEST the FROM path is a key prefix, so it must name an object:
      https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-source-s3.html"""
    if not isinstance(st.tree, exp.Copy):
        return
    parts = copy_parts(st.sql)
    opts = parts.options
    if "IAM_ROLE" not in opts or len(opts["IAM_ROLE"]) != 1:
        yield "authorize with IAM_ROLE '<role arn>'"
    if _KEY_AUTH & opts.keys():
        yield f"IAM_ROLE excludes {sorted(_KEY_AUTH & opts.keys())}"
    if opts.get("JSON") != ["auto"]:
        yield "the loader loads FORMAT JSON 'auto'"
    if _NOT_WITH_JSON & opts.keys():
        yield f"not supported with JSON: {sorted(_NOT_WITH_JSON & opts.keys())}"
    if len(_COMPRESSIONS & opts.keys()) > 1:
        yield f"one compression at most, not {sorted(_COMPRESSIONS & opts.keys())}"
    if "REGION" in opts:
        yield "no REGION: the manifest and every object must be in the warehouse's region"
    if not parts.source.startswith("s3://") or parts.source.endswith("/"):
        yield f"FROM must name one S3 object (a manifest, or a file; a prefix loads all under it): {parts.source}"


@statement_rule("merge_forms")
def _merge_forms(st: Statement) -> Iterator[str]:
    """Supported MERGE: source a table (not a view or subquery), no WITH, ON equal predicates, WHEN MATCHED THEN
    UPDATE|DELETE, WHEN NOT MATCHED THEN INSERT, no further conditions, and no partial reference to a SUPER
    column (an element or attribute) in the ON condition or the expressions:
    https://docs.aws.amazon.com/redshift/latest/dg/r_MERGE.html"""
    merge = st.tree
    if not isinstance(merge, exp.Merge):
        return
    if merge.args.get("with") or merge.args.get("with_"):
        yield "no WITH clause in MERGE"
    if not isinstance(merge.args.get("using"), exp.Table):
        yield "the MERGE source must be a table"
    on = merge.args.get("on")
    for pred in on.flatten() if isinstance(on, exp.And) else [on]:
        columns = (
            isinstance(pred, exp.EQ) and isinstance(pred.this, exp.Column) and isinstance(pred.expression, exp.Column)
        )
        if not columns:
            yield f"ON takes equal predicates between columns, not {pred.sql(dialect='redshift') if pred else None}"
    whens = merge.args.get("whens")
    for when in whens.expressions if whens else []:
        allowed = (exp.Update, exp.Delete) if when.args.get("matched") else (exp.Insert,)
        if when.args.get("condition") or not isinstance(when.args.get("then"), allowed):
            yield f"unsupported clause: {when.sql(dialect='redshift')[:80]}"
    for node in merge.find_all(exp.Bracket, exp.Dot, exp.Column):
        if isinstance(node, exp.Bracket | exp.Dot) or node.args.get("db"):
            yield f"partial reference (element or attribute) in MERGE: {node.sql(dialect='redshift')}"


@statement_rule("super_not_a_key")
def _super_not_a_key(st: Statement) -> Iterator[str]:
    """ "You can't define SUPER columns as either a distribution or sort key":
    https://docs.aws.amazon.com/redshift/latest/dg/limitations-super.html"""
    if not isinstance(st.tree, exp.Create) or not isinstance(st.tree.this, exp.Schema):
        return
    supers = {
        col.name.lower()
        for col in st.tree.this.expressions
        if isinstance(col, exp.ColumnDef) and col.kind and col.kind.this == exp.DataType.Type.SUPER
    }
    for prop in st.tree.find_all(exp.DistKeyProperty, exp.SortKeyProperty):
        keys = prop.this if isinstance(prop.this, list) else [prop.this]
        for key in keys:
            if key is not None and key.name.lower() in supers:
                yield f"SUPER column {key.name} cannot be a {type(prop).__name__.removesuffix('Property')}"


@statement_rule("reserved_words")
def _reserved_words(st: Statement) -> Iterator[str]:
    """Reserved words name nothing unless delimited ("..."): https://docs.aws.amazon.com/redshift/latest/dg/r_pg_keywords.html"""
    for ident in st.tree.find_all(exp.Identifier) if st.tree and not isinstance(st.tree, exp.Copy) else ():
        if not ident.quoted and ident.name.upper() in RESERVED_WORDS:
            yield f"reserved word {ident.name} used as an identifier"


@statement_rule("denied_functions")
def _denied_functions(st: Statement) -> Iterator[str]:
    """Functions DuckDB accepts and Redshift refuses (``DENIED_FUNCTIONS``, each group with its page)."""
    for token, following in zip(st.tokens, [*st.tokens[1:], None], strict=True):
        name = token.text.lower()
        called = following is not None and following.token_type == TokenType.L_PAREN
        bare = token.token_type in (TokenType.CURRENT_TIMESTAMP, TokenType.CURRENT_TIME)
        if name in DENIED_FUNCTIONS and token.token_type != TokenType.STRING and (called or bare):
            yield f"{name}: {DENIED_FUNCTIONS[name]}"


@statement_rule("sort_aggregates_share_order")
def _sort_aggregates_share_order(st: Statement) -> Iterator[str]:
    """ "If a statement includes multiple calls to sort-based aggregate functions (LISTAGG, PERCENTILE_CONT, or
    MEDIAN), they must all use the same ORDER BY values. Note that MEDIAN applies an implicit order by on the
    expression value": https://docs.aws.amazon.com/redshift/latest/dg/r_PERCENTILE_CONT.html (DuckDB has no such
    rule: a report with a p95 per metric column would run locally and fail on Redshift)."""
    orders: set[tuple[str, ...]] = set()
    for node in st.tree.find_all(exp.WithinGroup, exp.Median) if st.tree else ():
        if isinstance(node, exp.Median):
            orders.add((node.this.sql(dialect="redshift"),))
        elif isinstance(node.this, exp.PercentileCont | exp.GroupConcat):
            order = node.expression.expressions
            orders.add(tuple(o.this.sql(dialect="redshift") + (" DESC" if o.args.get("desc") else "") for o in order))
    if len(orders) > 1:
        yield f"sort-based aggregates ordered by different values: {sorted(orders)}"


# --- batch rules (one BatchExecuteStatement: one transaction) --------------------------------------------------


@batch_rule("batch_size")
def _batch_size(batch: Sequence[Statement]) -> Iterator[str]:
    """At most 40 statements in one BatchExecuteStatement:
    https://docs.aws.amazon.com/redshift-data/latest/APIReference/API_BatchExecuteStatement.html"""
    if len(batch) > MAX_BATCH_STATEMENTS:
        yield f"{len(batch)} statements, over the Data API's {MAX_BATCH_STATEMENTS} per batch"


@batch_rule("one_transaction")
def _one_transaction(batch: Sequence[Statement]) -> Iterator[str]:
    """A batch's statements "are run as a single transaction"
    (https://docs.aws.amazon.com/redshift/latest/mgmt/data-api.html#data-api-calling-considerations); nothing in
    it may end that transaction early: TRUNCATE "commits the transaction in which it is run"
    (https://docs.aws.amazon.com/redshift/latest/dg/r_TRUNCATE.html), VACUUM cannot run in a transaction block
    (https://docs.aws.amazon.com/redshift/latest/dg/r_VACUUM_command.html), and BEGIN/COMMIT/ROLLBACK/END would
    split it."""
    for st in batch:
        first = st.tokens[0].text.upper() if st.tokens else ""
        if first in {"TRUNCATE", "VACUUM", "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT"}:
            yield f"{first} inside a BatchExecuteStatement transaction"


@batch_rule("merge_source_unique")
def _merge_source_unique(batch: Sequence[Statement]) -> Iterator[str]:
    """A MERGE fails when one target row matches several source rows ("Found multiple matches to update the same
    tuple"): https://docs.aws.amazon.com/redshift/latest/dg/r_MERGE.html. Statically: the source must be built
    earlier in the same batch with one row per ON key, by ``QUALIFY ROW_NUMBER() OVER (PARTITION BY <exactly the
    ON key>) = 1``."""
    unique_on: dict[str, set[str]] = {}
    for st in batch:
        if isinstance(st.tree, exp.Create) and isinstance(st.tree.expression, exp.Select):
            unique_on[st.tree.this.name.lower()] = _row_number_partition(st.tree.expression)
        if isinstance(st.tree, exp.Merge):
            source = st.tree.args["using"]
            alias = (source.alias or source.name).lower()
            key = {c.name.lower() for c in st.tree.args["on"].find_all(exp.Column) if c.table.lower() == alias}
            if unique_on.get(source.name.lower()) != key:
                yield f"MERGE source {source.name} is not deduplicated on the ON key {sorted(key)} in this batch"


def _row_number_partition(select: exp.Select) -> set[str]:
    """The PARTITION BY columns of ``QUALIFY ROW_NUMBER() OVER (PARTITION BY ...) = 1`` (empty if not that form)."""
    qualify = select.args.get("qualify")
    cond = qualify.this if qualify else None
    if not (isinstance(cond, exp.EQ) and isinstance(cond.this, exp.Window) and cond.expression.name == "1"):
        return set()
    if not isinstance(cond.this.this, exp.RowNumber):
        return set()
    return {c.name.lower() for c in cond.this.args.get("partition_by") or [] if isinstance(c, exp.Column)}


# --- entry points ------------------------------------------------------------------------------------------------


def check_statement(sql: str) -> list[Violation]:
    """Every rule one statement breaks (a statement sqlglot cannot parse as Redshift breaks ``parses``)."""
    try:
        st = parse(sql)
    except ParseError as exc:
        return [Violation("parses", str(exc).splitlines()[0], sql)]
    return [Violation(name, msg, sql) for name, rule in STATEMENT_RULES.items() for msg in rule(st)]


def check_batch(statements: Sequence[str]) -> list[Violation]:
    """Every rule a batch (one transaction) breaks: each statement's, then the batch's."""
    found = [v for sql in statements for v in check_statement(sql)]
    if found:
        return found
    parsed = [parse(sql) for sql in statements]
    return [
        Violation(name, msg, " ; ".join(statements)[:200]) for name, rule in BATCH_RULES.items() for msg in rule(parsed)
    ]


def guard(statements: Sequence[str]) -> None:
    """Raise ``RuleViolation`` if Redshift (or the Data API) would refuse the batch."""
    violations = check_batch(statements)
    if violations:
        raise RuleViolation(violations)
