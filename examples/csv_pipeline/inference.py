"""CSV pipeline: check, clean and export a table of orders, with the standard library alone.

What it is: plain data processing, no model. The input is a CSV file of orders with the
columns `order_id, date, region, product, quantity, unit_price` (more columns are
allowed and ignored; the delimiter may be `,`, `;` or a tab). A row is good when its
order id is new, the date is `YYYY-MM-DD`, region and product are not blank, quantity is
a whole number >= 0 and unit_price a decimal number >= 0, both in ASCII digits (`12`,
`2.50`; not `1_000`, `+5` or `1e3`). The file must be UTF-8 (a BOM is fine); each required
column must appear once in the header. An error's line is the line its record starts on.

- `validate` reports the table's shape and every bad row, and writes no file.
- `process` keeps the good rows, cleaned (trimmed, region in title case, product in lower
  case, revenue = quantity x unit_price), sorted by date, as a CSV file; or, with
  `group_by`, their totals per region, product or month.
- `export` writes the cleaned rows as JSON (an array) or JSON Lines, with typed values.

The whole table is read into memory: fine for files of a few hundred MB, not beyond.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Literal, Optional

from pydantic import BaseModel, Field

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, File, Metadata

COLUMNS = ["order_id", "date", "region", "product", "quantity", "unit_price"]
CENTS = Decimal("0.01")
MAX_QUANTITY, MAX_PRICE = 10**9, Decimal(10**12)  # keeps revenue exact in Decimal's 28 digits
# int() and Decimal() also take "1_000", "+5", "1e3" and non-ASCII digits: not what a table means
WHOLE = re.compile(r"-?[0-9]+")
DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


class TableInput(BaseAppInput):
    table: File = Field(description="The orders, as a CSV file with a header row")
    max_errors: int = Field(100, ge=0, le=10000, description="Report at most this many bad rows")


class RowError(BaseModel):
    line: int = Field(description="Line of the file (the header is line 1)")
    column: Optional[str] = Field(None, description="The offending column; none when the whole row is wrong")
    value: Optional[str] = Field(None, description="The offending value")
    message: str = Field(description="What is wrong")


class ValidationReport(BaseAppOutput):
    ok: bool = Field(description="Every required column is there and every row is good")
    rows: int = Field(description="Data rows read (the header not counted)")
    columns: list[str] = Field(description="The header, as read")
    missing_columns: list[str] = Field(description="Required columns the header lacks")
    duplicate_columns: list[str] = Field(description="Required columns the header has more than once")
    valid_rows: int = Field(description="Rows that pass every check")
    invalid_rows: int = Field(description="Rows with at least one error")
    errors: list[RowError] = Field(description="The errors, in file order, up to max_errors")


class ProcessInput(TableInput):
    group_by: Optional[Literal["region", "product", "month"]] = Field(
        None, description="Write totals per region, product or month (YYYY-MM) instead of the cleaned rows"
    )


class ProcessOutput(BaseAppOutput):
    table: File = Field(description="The result, as CSV")
    rows_in: int = Field(description="Data rows read")
    rows_out: int = Field(description="Rows written")
    dropped: int = Field(description="Bad rows left out")
    errors: list[RowError] = Field(description="Why rows were dropped, up to max_errors")


class ExportInput(TableInput):
    format: Literal["json", "jsonl"] = Field("json", description="One JSON array, or one JSON object per line")


class ExportOutput(BaseAppOutput):
    file: File = Field(description="The cleaned rows as JSON or JSON Lines")
    records: int = Field(description="Records written")
    dropped: int = Field(description="Bad rows left out")


@dataclass(frozen=True)
class Order:
    order_id: str
    date: str
    region: str
    product: str
    quantity: int
    unit_price: Decimal

    @property
    def revenue(self) -> Decimal:
        return (self.quantity * self.unit_price).quantize(CENTS)


@dataclass
class Table:
    """A CSV read and checked: its header, its good orders and its errors (all of them)."""

    columns: list[str]
    missing: list[str]
    duplicated: list[str]
    rows: int
    orders: list[Order]
    errors: list[RowError]

    @property
    def invalid_rows(self) -> int:
        return len({error.line for error in self.errors})

    def require_columns(self) -> None:
        if self.missing:
            raise ValueError(
                f"the CSV lacks the column(s) {', '.join(self.missing)}; its header is {', '.join(self.columns) or 'empty'}"
            )
        if self.duplicated:
            raise ValueError(f"the CSV has the column(s) {', '.join(self.duplicated)} more than once; keep one of each")


class App(BaseApp):
    def validate(self, input_data: TableInput, metadata: Metadata) -> ValidationReport:
        """Check the header and every row; report what is wrong, line by line."""
        table = read_orders(input_data.table.path)
        metadata.log(f"{table.rows} row(s): {len(table.orders)} good, {table.invalid_rows} bad")
        return ValidationReport(
            ok=not table.missing and not table.duplicated and not table.errors,
            rows=table.rows,
            columns=table.columns,
            missing_columns=table.missing,
            duplicate_columns=table.duplicated,
            valid_rows=len(table.orders),
            invalid_rows=table.invalid_rows,
            errors=table.errors[: input_data.max_errors],
        )

    def process(self, input_data: ProcessInput, metadata: Metadata) -> ProcessOutput:
        """Clean the good rows (adding revenue), or total them per region, product or month; write CSV."""
        table = read_orders(input_data.table.path)
        table.require_columns()
        orders = sorted(table.orders, key=lambda order: (order.date, order.order_id))
        if input_data.group_by:
            header, rows = ["group", "orders", "quantity", "revenue"], totals(orders, input_data.group_by)
        else:
            header, rows = [*COLUMNS, "revenue"], [cleaned_row(order) for order in orders]
        path = metadata.output_dir / "processed.csv"
        with open(path, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(header)
            writer.writerows(rows)
        metadata.log(f"wrote {len(rows)} row(s), dropped {table.invalid_rows}")
        return ProcessOutput(
            table=File(path=str(path)),
            rows_in=table.rows,
            rows_out=len(rows),
            dropped=table.invalid_rows,
            errors=table.errors[: input_data.max_errors],
        )

    def export(self, input_data: ExportInput, metadata: Metadata) -> ExportOutput:
        """Write the cleaned rows as JSON or JSON Lines, with numbers as numbers."""
        table = read_orders(input_data.table.path)
        table.require_columns()
        records = [record(order) for order in sorted(table.orders, key=lambda order: (order.date, order.order_id))]
        path = metadata.output_dir / f"orders.{input_data.format}"
        with open(path, "w", encoding="utf-8") as out:
            if input_data.format == "json":
                json.dump(records, out, indent=2)
                out.write("\n")
            else:
                out.writelines(json.dumps(item) + "\n" for item in records)
        metadata.log(f"exported {len(records)} record(s) as {input_data.format}")
        content_type = "application/json" if input_data.format == "json" else "application/x-ndjson"
        return ExportOutput(file=File(path=str(path), content_type=content_type), records=len(records), dropped=table.invalid_rows)


def read_text(path: str, field: str = "table") -> str:
    """The file as text; a clear error, naming the field, when it is not UTF-8."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as source:
            return source.read()
    except UnicodeDecodeError as error:  # guessing another encoding could silently garble names
        raise ValueError(
            f"{field}: the file is not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
            "save it as UTF-8 (\"CSV UTF-8\" in a spreadsheet) and send it again"
        ) from None


def read_orders(path: str) -> Table:
    text = read_text(path)
    reader = csv.reader(io.StringIO(text), _dialect(text))
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in COLUMNS if name not in header]
    # which of two "quantity" columns is meant cannot be told: refuse rather than pick one
    duplicated = [name for name in COLUMNS if header.count(name) > 1]
    if missing or duplicated:
        rows = sum(1 for row in reader if any(row))
        return Table(columns=header, missing=missing, duplicated=duplicated, rows=rows, orders=[], errors=[])
    index = {name: header.index(name) for name in COLUMNS}
    orders, errors, first_seen, rows = [], [], {}, 0
    while True:
        line = reader.line_num + 1  # where the record starts: a quoted field may span lines
        fields = next(reader, None)
        if fields is None:
            break
        if not any(field.strip() for field in fields):
            continue  # blank lines are not rows
        rows += 1
        if len(fields) != len(header):
            errors.append(RowError(line=line, message=f"expected {len(header)} fields, found {len(fields)}"))
            continue
        order, row_errors = parse_order({name: fields[i].strip() for name, i in index.items()}, line)
        if order is not None and order.order_id in first_seen:
            row_errors.append(RowError(line=line, column="order_id", value=order.order_id,
                                       message=f"duplicate order id (first on line {first_seen[order.order_id]})"))
        if row_errors:
            errors.extend(row_errors)
        else:
            first_seen[order.order_id] = line
            orders.append(order)
    return Table(columns=header, missing=[], duplicated=[], rows=rows, orders=orders, errors=errors)


def parse_order(values: dict[str, str], line: int) -> tuple[Optional[Order], list[RowError]]:
    """One row's values as an Order, or the errors of each bad field."""
    errors: list[RowError] = []

    def bad(column: str, message: str) -> None:
        errors.append(RowError(line=line, column=column, value=values[column], message=message))

    for column in ("order_id", "region", "product"):
        if not values[column]:
            bad(column, "must not be blank")
    try:
        date = datetime.strptime(values["date"], "%Y-%m-%d").date().isoformat()
    except ValueError:
        bad("date", "not a valid date of the form YYYY-MM-DD")
    quantity = parse_whole(values["quantity"])
    if quantity is None:
        bad("quantity", "not a whole number")
    elif not 0 <= quantity <= MAX_QUANTITY:
        bad("quantity", f"must be from 0 to {MAX_QUANTITY}")
    unit_price = parse_decimal(values["unit_price"])
    if unit_price is None:
        bad("unit_price", "not a number")
    elif not 0 <= unit_price <= MAX_PRICE:
        bad("unit_price", f"must be a number from 0 to {MAX_PRICE}")
    if errors:
        return None, errors
    assert quantity is not None and unit_price is not None
    unit_price = unit_price.copy_abs()  # "-0" is 0 (negatives were refused above): never written "-0.00"
    region = " ".join(values["region"].split()).title()
    product = " ".join(values["product"].split()).lower()
    return Order(values["order_id"], date, region, product, quantity, unit_price), []


def parse_whole(text: str) -> Optional[int]:
    """An optionally negative run of ASCII digits as an int, else None."""
    return int(text) if WHOLE.fullmatch(text) else None


def parse_decimal(text: str) -> Optional[Decimal]:
    """A plain decimal number in ASCII digits ("2.50", ".5", "-1") as a Decimal, else None."""
    try:
        return Decimal(text) if DECIMAL.fullmatch(text) else None
    except InvalidOperation:  # cannot happen for text the pattern accepts; kept as a guard
        return None


def cleaned_row(order: Order) -> list[str]:
    return [order.order_id, order.date, order.region, order.product, str(order.quantity),
            str(order.unit_price.quantize(CENTS)), str(order.revenue)]


def totals(orders: list[Order], group_by: str) -> list[list[str]]:
    groups: dict[str, list[Order]] = {}
    for order in orders:
        key = order.date[:7] if group_by == "month" else getattr(order, group_by)
        groups.setdefault(key, []).append(order)
    return [
        [key, str(len(group)), str(sum(o.quantity for o in group)), str(sum(o.revenue for o in group))]
        for key, group in sorted(groups.items())
    ]


def record(order: Order) -> dict:
    return {
        "order_id": order.order_id,
        "date": order.date,
        "region": order.region,
        "product": order.product,
        "quantity": order.quantity,
        "unit_price": float(order.unit_price),
        "revenue": float(order.revenue),
    }


def _dialect(text: str) -> type[csv.Dialect] | csv.Dialect:
    try:
        return csv.Sniffer().sniff(text[:8192], delimiters=",;\t")
    except csv.Error:  # one column, or too little text to tell: plain commas
        return csv.excel


