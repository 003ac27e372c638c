"""Entity-relationship diagram of the payments schema, generated from the live
catalog: Mermaid erDiagram (docs/erd.md), Graphviz source (docs/erd.dot) and
its SVG/PNG renderings.

    python -m pgops.erd --docker pg-primary --out docs          # from the lab
    python -m pgops.erd --dsn "host=... dbname=payments" --check docs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SCHEMA = "payments"

# Tables (plain and partitioned parents, not partitions), their columns, and
# their primary, unique and foreign keys, as one JSON document.
CATALOG_QUERY = """
WITH rel AS (
    SELECT c.oid, c.relname
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
)
SELECT json_build_object(
  'tables', (SELECT json_agg(json_build_object(
      'name', rel.relname,
      'columns', (SELECT json_agg(json_build_object(
                      'name', a.attname, 'type', t.typname, 'not_null', a.attnotnull) ORDER BY a.attnum)
                    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                   WHERE a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped),
      'keys', (SELECT coalesce(json_agg(json_build_object(
                      'type', k.contype,
                      'columns', (SELECT json_agg(a.attname ORDER BY u.ord)
                                    FROM unnest(k.conkey) WITH ORDINALITY u(attnum, ord)
                                    JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum),
                      'references', k.confrelid::regclass::text,
                      'name', k.conname) ORDER BY k.conname), '[]')
                 FROM pg_constraint k
                WHERE k.conrelid = rel.oid AND k.contype IN ('p', 'u', 'f') AND k.conparentid = 0)
    ) ORDER BY rel.relname) FROM rel)
)
"""


def fetch_with_dsn(dsn: str) -> dict:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(CATALOG_QUERY, {"schema": SCHEMA}).fetchone()[0]


def fetch_with_docker(container: str, database: str = "payments") -> dict:
    query = CATALOG_QUERY.replace("%(schema)s", f"'{SCHEMA}'")
    out = subprocess.run(
        ["docker", "exec", container, "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", database, "-c", query],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def _short(name: str) -> str:
    return name.split(".")[-1]


def _key_marks(table: dict) -> dict[str, list[str]]:
    marks: dict[str, list[str]] = {}
    for key in table["keys"]:
        mark = {"p": "PK", "u": "UK", "f": "FK"}[key["type"]]
        for col in key["columns"]:
            if mark not in marks.setdefault(col, []):
                marks[col].append(mark)
    return marks


def _foreign_keys(catalog: dict):
    for table in catalog["tables"]:
        nullable = {c["name"] for c in table["columns"] if not c["not_null"]}
        for key in table["keys"]:
            if key["type"] == "f":
                optional = any(col in nullable for col in key["columns"])
                yield table["name"], _short(key["references"]), key["columns"], optional


def mermaid(catalog: dict) -> str:
    lines = [
        "# Payments OLTP schema: entity-relationship diagram",
        "",
        "Generated from the live database catalog by `make erd` (`python -m pgops.erd`);",
        "CI regenerates it and fails when it no longer matches the schema. Rendered",
        "versions: [erd.svg](erd.svg), [erd.png](erd.png).",
        "",
        "```mermaid",
        "erDiagram",
    ]
    for table in catalog["tables"]:
        marks = _key_marks(table)
        lines.append(f"    {table['name']} {{")
        for col in table["columns"]:
            key = ",".join(marks.get(col["name"], []))
            lines.append(f"        {col['type']} {col['name']}{' ' + key if key else ''}")
        lines.append("    }")
    for child, parent, columns, optional in sorted(_foreign_keys(catalog)):
        left = "|o" if optional else "||"
        lines.append(f'    {parent} {left}--o{{ {child} : "{", ".join(columns)}"')
    lines.append("```")
    return "\n".join(lines) + "\n"


def dot(catalog: dict) -> str:
    lines = [
        "digraph payments {",
        '  graph [rankdir=LR, fontname="Helvetica", nodesep=0.4, ranksep=1.0];',
        '  node [shape=plain, fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=8, arrowhead=crow, arrowtail=teetee, dir=both];',
    ]
    for table in catalog["tables"]:
        marks = _key_marks(table)
        rows = [f'<tr><td bgcolor="lightsteelblue" colspan="2"><b>{table["name"]}</b></td></tr>']
        for col in table["columns"]:
            key = ",".join(marks.get(col["name"], []))
            name = f"<u>{col['name']}</u>" if "PK" in key else col["name"]
            rows.append(
                f'<tr><td align="left" port="{col["name"]}">{name}</td><td align="left">{col["type"]}</td></tr>'
            )
        body = "".join(rows)
        lines.append(f'  {table["name"]} [label=<<table border="0" cellborder="1" cellspacing="0">{body}</table>>];')
    for child, parent, columns, optional in sorted(_foreign_keys(catalog)):
        style = ', style="dashed"' if optional else ""
        lines.append(f'  {parent} -> {child} [label="{", ".join(columns)}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def write(catalog: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "erd.md").write_text(mermaid(catalog))
    (out / "erd.dot").write_text(dot(catalog))
    for fmt in ("svg", "png"):
        subprocess.run(["dot", f"-T{fmt}", "-o", str(out / f"erd.{fmt}"), str(out / "erd.dot")], check=True)


def stale(catalog: dict, out: Path) -> list[str]:
    """Committed files that no longer match the catalog."""
    wanted = {"erd.md": mermaid(catalog), "erd.dot": dot(catalog)}
    stale_files = [
        name for name, text in wanted.items() if not (out / name).exists() or (out / name).read_text() != text
    ]
    stale_files += [f"erd.{fmt}" for fmt in ("svg", "png") if not (out / f"erd.{fmt}").exists()]
    return stale_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dsn", help="libpq connection string to the payments database")
    source.add_argument("--docker", metavar="CONTAINER", help="lab container to read the catalog from")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, help="write erd.md, erd.dot, erd.svg and erd.png here")
    action.add_argument("--check", type=Path, help="exit 1 when the files here do not match the catalog")
    args = parser.parse_args(argv)
    catalog = fetch_with_dsn(args.dsn) if args.dsn else fetch_with_docker(args.docker)
    if args.out:
        write(catalog, args.out)
        return 0
    problems = stale(catalog, args.check)
    if problems:
        print(f"ERD out of date with the schema: {', '.join(problems)}; run `make erd`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
