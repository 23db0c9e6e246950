/** One line of the summary table: a measured value next to the target. */
export interface SummaryRow {
  metric: string;
  measured: string;
  target: string;
  /** Undefined for rows that are information only. */
  pass?: boolean;
}

export function printTable(rows: readonly SummaryRow[], write: (line: string) => void): void {
  const headers = ['metric', 'measured', 'target', 'result'];
  const cells = rows.map((row) => [row.metric, row.measured, row.target, row.pass === undefined ? '' : row.pass ? 'PASS' : 'FAIL']);
  const widths = headers.map((header, i) => Math.max(header.length, ...cells.map((line) => line[i]!.length)));
  const line = (values: string[]) => values.map((value, i) => value.padEnd(widths[i]!)).join('  ').trimEnd();
  write(line(headers));
  write(widths.map((width) => '-'.repeat(width)).join('  '));
  for (const values of cells) write(line(values));
}
