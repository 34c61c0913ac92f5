"""The Markdown table a benchmark prints at its end, ready for docs/benchmarks.md."""


def print_table(header: list[str], rows: list, numeric: set[int] = frozenset()) -> None:
    """`rows` under `header`; the columns in `numeric` are right-aligned."""
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---:" if i in numeric else "---" for i in range(len(header))) + " |")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
