//! Reading MMBench tables the way VLMEvalKit does (`pd.read_csv(sep='\t')`, `pd.read_excel`):
//! a header row, then cells; NA strings and numeric columns follow pandas (see `pyfmt`).

use super::pyfmt::{column_strings, py_float_repr};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// A table with pandas-normalised cells: `None` is NaN.
pub struct Table {
    pub columns: Vec<String>,
    /// Column-major cells.
    pub cells: Vec<Vec<Option<String>>>,
    /// Source line (TSV) or row (xlsx, 1-based incl. header) of each record, for errors.
    pub lines: Vec<usize>,
    by_name: HashMap<String, usize>,
}

impl Table {
    fn new(columns: Vec<String>, rows: Vec<Vec<Option<String>>>, lines: Vec<usize>, path: &Path) -> Result<Self> {
        // VLMEvalKit lower-cases every column name except single uppercase letters (options).
        let norm: Vec<String> = columns
            .iter()
            .map(|c| {
                if c.len() == 1 && c.as_bytes()[0].is_ascii_uppercase() {
                    c.clone()
                } else {
                    c.to_lowercase()
                }
            })
            .collect();
        let mut by_name = HashMap::new();
        for (i, c) in norm.iter().enumerate() {
            if by_name.insert(c.clone(), i).is_some() {
                return Err(Error::input(path, format!("column `{c}` appears twice in the header")));
            }
        }
        let mut cells: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); norm.len()];
        for row in rows {
            for (j, v) in row.into_iter().enumerate() {
                cells[j].push(v);
            }
        }
        // Columns other than the image are typed as pandas would type them.
        for (j, name) in norm.iter().enumerate() {
            if name != "image" {
                cells[j] = column_strings(&cells[j]);
            } else {
                cells[j] = cells[j]
                    .iter()
                    .map(|c| c.clone().filter(|s| !super::pyfmt::is_na(s)))
                    .collect();
            }
        }
        Ok(Table {
            columns: norm,
            cells,
            lines,
            by_name,
        })
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn column(&self, name: &str) -> Option<&[Option<String>]> {
        self.by_name.get(name).map(|&i| self.cells[i].as_slice())
    }

    /// A required column, or an error naming the file and the column.
    pub fn require(&self, name: &str, path: &Path) -> Result<&[Option<String>]> {
        self.column(name).ok_or_else(|| {
            Error::input(
                path,
                format!("missing column `{name}` (columns: {})", self.columns.join(", ")),
            )
        })
    }

    /// The `index` column as integers (VLMEvalKit asserts they are ints).
    pub fn indices(&self, path: &Path) -> Result<Vec<i64>> {
        let col = self.require("index", path)?;
        col.iter()
            .zip(&self.lines)
            .map(|(v, &line)| {
                let s = v
                    .as_deref()
                    .ok_or_else(|| Error::at_line(path, line, "empty `index`"))?;
                s.parse::<i64>()
                    .ok()
                    .or_else(|| {
                        s.parse::<f64>()
                            .ok()
                            .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                            .map(|f| f as i64)
                    })
                    .ok_or_else(|| Error::at_line(path, line, format!("`index` {s:?} is not an integer")))
            })
            .collect()
    }
}

/// Read a TSV as pandas does with its defaults (`"` quoting, `""` escapes); the `image`
/// column is dropped (scoring never needs it).
pub fn read_tsv(path: &Path) -> Result<Table> {
    read_tsv_opts(path, false)
}

/// [`read_tsv`], keeping the base64 `image` column when `keep_images` (to run a model).
pub fn read_tsv_opts(path: &Path, keep_images: bool) -> Result<Table> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .has_headers(true)
        .flexible(true)
        .from_reader(std::io::BufReader::new(file));
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| Error::input(path, format!("cannot read the TSV header: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    if headers.is_empty() || headers.iter().all(|h| h.is_empty()) {
        return Err(Error::input(path, "empty TSV header"));
    }
    // Images are not needed for scoring; don't keep megabytes of base64 in memory.
    let image_col = headers
        .iter()
        .position(|h| h.eq_ignore_ascii_case("image"))
        .filter(|_| !keep_images);
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
            Error::at_line(path, line, format!("malformed TSV record: {e}"))
        })?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        if rec.len() == 1 && rec.get(0) == Some("") {
            continue; // blank line, skipped by pandas
        }
        if rec.len() > headers.len() {
            return Err(Error::at_line(
                path,
                line,
                format!("{} fields, the header has {}", rec.len(), headers.len()),
            ));
        }
        let mut row: Vec<Option<String>> = rec
            .iter()
            .enumerate()
            .map(|(j, s)| {
                if Some(j) == image_col {
                    None
                } else {
                    Some(s.to_string())
                }
            })
            .collect();
        row.resize(headers.len(), None); // short rows are padded with NaN, as pandas does
        rows.push(row);
        lines.push(line);
    }
    Table::new(headers, rows, lines, path)
}

/// Read the first sheet of an xlsx file (VLMEvalKit's default prediction format).
pub fn read_xlsx(path: &Path) -> Result<Table> {
    use calamine::{open_workbook_auto, Data, Reader};
    let mut wb =
        open_workbook_auto(path).map_err(|e| Error::input(path, format!("cannot open the spreadsheet: {e}")))?;
    let range = wb
        .worksheet_range_at(0)
        .ok_or_else(|| Error::input(path, "the spreadsheet has no sheet"))?
        .map_err(|e| Error::input(path, format!("cannot read the first sheet: {e}")))?;
    let cell = |d: &Data| -> Option<String> {
        match d {
            Data::Empty => None,
            Data::String(s) => Some(s.clone()),
            Data::Int(i) => Some(i.to_string()),
            // pandas' openpyxl reader turns integral floats into ints
            Data::Float(f) if f.fract() == 0.0 && f.abs() < 9e15 => Some((*f as i64).to_string()),
            Data::Float(f) => Some(py_float_repr(*f)),
            Data::Bool(b) => Some(if *b { "True".into() } else { "False".into() }),
            other => Some(other.to_string()),
        }
    };
    let mut rows_iter = range.rows();
    let headers: Vec<String> = rows_iter
        .next()
        .ok_or_else(|| Error::input(path, "the first sheet is empty"))?
        .iter()
        .map(|d| cell(d).unwrap_or_default())
        .collect();
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for (i, r) in rows_iter.enumerate() {
        if r.iter().all(|d| matches!(d, Data::Empty)) {
            continue;
        }
        let mut row: Vec<Option<String>> = r.iter().map(cell).collect();
        row.resize(headers.len(), None);
        rows.push(row);
        lines.push(i + 2);
    }
    Table::new(headers, rows, lines, path)
}
