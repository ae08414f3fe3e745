"""Reads a dino-stream shard directory with pyarrow alone, as any Parquet user would.

usage: read_shards.py DIR SRC

Checks the schema, the row counts against manifest.json, and that every stored JPEG is
byte-for-byte the file SRC/key it came from. Exits non-zero on any mismatch.
"""
import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

EXPECTED = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("jpeg", pa.binary(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
    ]
)


def main(out_dir, src):
    with open(os.path.join(out_dir, "manifest.json")) as f:
        manifest = json.load(f)
    total = 0
    for name, split in manifest["splits"].items():
        converted = {n["key"] for n in split["converted"]}
        for shard in split["shards"]:
            path = os.path.join(out_dir, shard["file"])
            table = pq.read_table(path)
            if not table.schema.remove_metadata().equals(EXPECTED):
                sys.exit(f"{path}: schema {table.schema} != {EXPECTED}")
            if table.num_rows != shard["rows"]:
                sys.exit(f"{path}: {table.num_rows} rows, manifest says {shard['rows']}")
            meta = pq.ParquetFile(path).metadata.metadata
            if meta.get(b"dino_stream.schema_version") != b"1":
                sys.exit(f"{path}: no schema version 1 in the footer")
            for key, jpeg in zip(table.column("key").to_pylist(), table.column("jpeg").to_pylist()):
                if key in converted:
                    continue
                with open(os.path.join(src, key), "rb") as f:
                    if f.read() != jpeg:
                        sys.exit(f"{path}: {key} differs from {src}/{key}")
            total += table.num_rows
    print(f"pyarrow read {total} rows (pyarrow {pa.__version__})")


if __name__ == "__main__":
    main(*sys.argv[1:])
