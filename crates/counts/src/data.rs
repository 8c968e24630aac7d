//! Count tables: `[N, D]` tables of non-negative integers (one example per row) read from text
//! (CSV, TSV, semicolon- or whitespace-separated) or NumPy `.npy` files, checked value by value
//! on the way in, and written back out as CSV/TSV or `.npy`.
//!
//! The format of a file being read is decided by its content (the `.npy` magic bytes), not its
//! name, so a `.txt` holding an `.npy` or a `.dat` holding CSV both load. Every value must be a
//! whole number in `0..=2^53` (the largest range a float64 holds exactly, so a count survives the
//! float arithmetic of a diffusion model); anything else is an error naming the file, the line and
//! column (text) or the element (`.npy`), and the value. No input makes this module panic.
//!
//! Text rules: fields are separated by commas, or by tabs for `.tsv`; for other names the
//! first non-comment line decides (commas if it has any, else tabs, else semicolons, else runs
//! of spaces, which is what `np.savetxt` writes). Whitespace around fields, blank lines, lines
//! starting with `#`, a UTF-8 byte-order mark and CRLF line ends are all ignored. The first line
//! is a header when one of its fields is quoted or is not a number. Values may be written `3`,
//! `+3`, `3.0` or `3e2` as long as they are whole.

use diffuse_tensor::atomic::write_atomic;
use diffuse_tensor::{Error, Result};
use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The largest count accepted: 2^53, above which a float64 no longer holds every integer.
pub const MAX_COUNT: i64 = 1 << 53;

/// The first bytes of every `.npy` file.
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// The rule every bad value breaks, repeated in each message so it stands on its own.
const RULE: &str = "count data must be non-negative integers";

/// Values longer than this are shortened in messages, which must stay one readable line.
const SHOWN_CHARS: usize = 40;

/// A table of counts: rows are examples, columns are dimensions.
#[derive(Debug)]
pub struct CountTable {
    /// [N, D] Int64 on the CPU, every value >= 0.
    pub values: Tensor,
    /// Column names: the CSV header when there is one, else "c0", "c1", ...
    pub columns: Vec<String>,
    /// Shape of one example when the .npy held more than 2 dims ([N, H, W] -> [H, W]); else [D].
    pub item_shape: Vec<i64>,
}

impl CountTable {
    /// Number of rows (examples).
    pub fn len(&self) -> usize {
        self.values.size().first().copied().unwrap_or(0).max(0) as usize
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of columns (values per example).
    pub fn dim(&self) -> usize {
        self.values.size().get(1).copied().unwrap_or(0).max(0) as usize
    }

    /// A table from a 2-D tensor of any real or bool kind on any device. The values are checked
    /// (finite, whole, `0..=2^53`) and stored as Int64 on the CPU; `columns` defaults to
    /// `c0, c1, ...`. Errors are [`Error::InvalidArgument`] naming the first bad element.
    pub fn from_tensor(values: Tensor, columns: Option<Vec<String>>) -> Result<Self> {
        let size = values.size();
        if size.len() != 2 {
            return Err(Error::InvalidArgument(format!(
                "a count table must be a 2-D tensor [rows, columns], got shape {size:?}"
            )));
        }
        let (n, d) = (size[0], size[1]);
        if d == 0 {
            return Err(Error::InvalidArgument(format!(
                "a count table needs at least one column, got shape {size:?}"
            )));
        }
        let flat = tensor_counts(&values).map_err(|problem| match problem {
            TensorProblem::Value(index, bad, shown) => {
                let place = element_place(index, &[n, d], false);
                Error::InvalidArgument(format!("element {place} {}", bad.describe_element(&shown)))
            }
            TensorProblem::Other(message) => Error::InvalidArgument(message),
        })?;
        let columns = match columns {
            Some(names) if names.len() as i64 != d => {
                return Err(Error::InvalidArgument(format!(
                    "{} column names for a table of {d} columns",
                    names.len()
                )))
            }
            Some(names) => names,
            None => default_columns(d as usize),
        };
        Ok(CountTable {
            values: Tensor::from_slice(&flat).reshape([n, d]),
            columns,
            item_shape: vec![d],
        })
    }

    /// Split off an evenly spread, deterministic held-out set: returns `(train, held_out)`.
    ///
    /// With N rows, `h = round(N * held_out_fraction)` rows are held out (at least 1, at most
    /// N - 1): rows `(j + 1) * N / h - 1` (integer division) for `j = 0..h`. When `1 / fraction`
    /// is a whole number k that divides N this is every k-th row, `i % k == k - 1`; the last row
    /// is always held out. Both parts keep the row order, the column names and the item shape.
    /// No seed is involved, so the split is the same on every machine and every run.
    pub fn split(&self, held_out_fraction: f64) -> Result<(CountTable, CountTable)> {
        let fraction = held_out_fraction;
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "held-out fraction {fraction} must be strictly between 0 and 1"
            )));
        }
        let n = self.len();
        if n < 2 {
            return Err(Error::InvalidArgument(format!(
                "cannot split a table of {n} row(s) into a training and a held-out part"
            )));
        }
        let h = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
        let mut held = vec![false; n];
        for j in 0..h {
            // (j + 1) * n / h grows by at least 1 per j (n >= h), so the rows are distinct.
            held[(j + 1) * n / h - 1] = true;
        }
        let pick = |keep: bool| -> Vec<i64> {
            (0..n)
                .filter(|&i| held[i] == keep)
                .map(|i| i as i64)
                .collect()
        };
        Ok((self.select(&pick(false)), self.select(&pick(true))))
    }

    /// The rows `rows` (in that order) as a new table with the same columns and item shape.
    fn select(&self, rows: &[i64]) -> CountTable {
        CountTable {
            values: self.values.index_select(0, &Tensor::from_slice(rows)),
            columns: self.columns.clone(),
            item_shape: self.item_shape.clone(),
        }
    }
}

/// Read a count table from .csv/.tsv/.txt (text) or .npy, chosen by CONTENT (NPY magic bytes
/// "\x93NUMPY"), not the extension.
pub fn load_counts(path: &Path) -> Result<CountTable> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let table = if bytes.starts_with(NPY_MAGIC) {
        parse_npy(path, &bytes)?
    } else {
        let text = as_text(&bytes).map_err(|why| {
            Error::format(path, format!("not a CSV or .npy file of counts ({why})"))
        })?;
        parse_text(path, text)?
    };
    tracing::debug!(
        path = %path.display(),
        rows = table.len(),
        columns = table.dim(),
        "loaded count table"
    );
    Ok(table)
}

/// Write a table as CSV (header row of column names, then integers) or NPY (<i8, C order,
/// shape [N, D] or [N, item_shape...]) chosen by extension (.csv/.tsv -> text with , or tab;
/// .npy -> npy; anything else -> InvalidArgument naming the path and the accepted extensions).
/// Atomic (temp file + rename).
pub fn save_counts(path: &Path, table: &CountTable) -> Result<()> {
    enum Format {
        Text(char),
        Npy,
    }
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let format = match extension.as_deref() {
        Some("csv") => Format::Text(','),
        Some("tsv") => Format::Text('\t'),
        Some("npy") => Format::Npy,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "{}: cannot tell which format to write from the name; use .csv, .tsv or .npy",
                path.display()
            )))
        }
    };
    let invalid = |why: String| Error::InvalidArgument(format!("{}: {why}", path.display()));
    // The fields are public, so a table may have been assembled by hand: check it like input.
    let checked = CountTable::from_tensor(table.values.shallow_clone(), None).map_err(|e| {
        invalid(match e {
            Error::InvalidArgument(why) => why,
            other => other.to_string(),
        })
    })?;
    let (n, d) = (checked.len(), checked.dim());
    if n == 0 {
        // A file without rows is refused on loading, so it is not written either.
        return Err(invalid(
            "the table has no rows; there is nothing to save".into(),
        ));
    }
    if table.columns.len() != d {
        return Err(invalid(format!(
            "the table has {} column names for {d} columns",
            table.columns.len()
        )));
    }
    let item =
        table.item_shape.iter().try_fold(
            1i64,
            |acc, &s| if s > 0 { acc.checked_mul(s) } else { None },
        );
    if item != Some(d as i64) {
        return Err(invalid(format!(
            "item shape {:?} does not hold the table's {d} columns",
            table.item_shape
        )));
    }
    let values = Vec::<i64>::try_from(checked.values.reshape([-1]))?;
    match format {
        Format::Text(delimiter) => {
            let header = table
                .columns
                .iter()
                .map(|name| header_field(name, delimiter))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(invalid)?
                .join(&delimiter.to_string());
            write_atomic(path, |w| {
                writeln!(w, "{header}")?;
                for row in values.chunks(d.max(1)) {
                    for (j, v) in row.iter().enumerate() {
                        if j > 0 {
                            write!(w, "{delimiter}")?;
                        }
                        write!(w, "{v}")?;
                    }
                    writeln!(w)?;
                }
                Ok(())
            })
        }
        Format::Npy => {
            let mut shape = vec![n as i64];
            shape.extend_from_slice(&table.item_shape);
            let header = npy_header(&shape);
            write_atomic(path, |w| {
                w.write_all(&header)?;
                for v in &values {
                    w.write_all(&v.to_le_bytes())?;
                }
                Ok(())
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Values

/// Why a value is not a count.
#[derive(Clone, Copy, Debug)]
enum Bad {
    Negative,
    NotWhole,
    NotFinite,
    TooLarge,
}

impl Bad {
    /// The message for value `shown` (as written in the file, or as formatted from the .npy).
    fn describe(self, shown: &str) -> String {
        let shown = clip(shown);
        match self {
            Bad::Negative => format!("{shown} is negative; {RULE}"),
            Bad::NotWhole => format!("{shown} is not a whole number; {RULE}"),
            Bad::NotFinite => format!("{shown} is not a finite number; {RULE}"),
            Bad::TooLarge => format!(
                "{shown} is too large; counts must be at most 2^53 = {MAX_COUNT} (the largest \
                 integer a float64 holds exactly)"
            ),
        }
    }

    /// The message for an element of a tensor or `.npy`, after `element [row R, column C] `.
    fn describe_element(self, shown: &str) -> String {
        let shown = clip(shown);
        match self {
            Bad::Negative => format!("is {shown}; {RULE}"),
            Bad::NotWhole => format!("is {shown}, not a whole number; {RULE}"),
            Bad::NotFinite => format!("is {shown}, not a finite number; {RULE}"),
            Bad::TooLarge => format!(
                "is {shown}, too large; counts must be at most 2^53 = {MAX_COUNT} (the largest \
                 integer a float64 holds exactly)"
            ),
        }
    }
}

fn check_int(v: i128) -> std::result::Result<i64, Bad> {
    if v < 0 {
        Err(Bad::Negative)
    } else if v > MAX_COUNT as i128 {
        Err(Bad::TooLarge)
    } else {
        Ok(v as i64)
    }
}

fn check_float(v: f64) -> std::result::Result<i64, Bad> {
    if !v.is_finite() {
        Err(Bad::NotFinite)
    } else if v < 0.0 {
        Err(Bad::Negative)
    } else if v.fract() != 0.0 {
        Err(Bad::NotWhole)
    } else if v > MAX_COUNT as f64 {
        Err(Bad::TooLarge)
    } else {
        Ok(v as i64)
    }
}

/// One text field as a count; the error is the message after `column NAME (COL#): `.
fn parse_count(s: &str) -> std::result::Result<i64, String> {
    if s.is_empty() {
        return Err("empty value".into());
    }
    // Plain integers are nearly every field of a real file: take the exact, fast path first.
    if let Ok(v) = s.parse::<i64>() {
        return check_int(v as i128).map_err(|bad| bad.describe(s));
    }
    match s.parse::<f64>() {
        Ok(v) => check_float(v).map_err(|bad| {
            // "1e400" parses as infinity: that is a number too large, not an "inf" written out.
            let overflowed = v.is_infinite() && !s.to_ascii_lowercase().contains("inf");
            match bad {
                Bad::NotFinite if overflowed && v > 0.0 => Bad::TooLarge.describe(s),
                Bad::NotFinite if overflowed => Bad::Negative.describe(s),
                _ => bad.describe(s),
            }
        }),
        Err(_) => Err(format!("{:?} is not a number", clip(s))),
    }
}

/// `s`, shortened to [`SHOWN_CHARS`] characters.
fn clip(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => Cow::Owned(format!("{}...", &s[..end])),
        None => Cow::Borrowed(s),
    }
}

fn default_columns(d: usize) -> Vec<String> {
    (0..d).map(|j| format!("c{j}")).collect()
}

/// Why a tensor cannot be a count table.
enum TensorProblem {
    /// The first bad element: C-order index, why, the value as shown.
    Value(usize, Bad, String),
    /// A kind that cannot hold counts, or values that could not be read.
    Other(String),
}

/// The values of a tensor as checked counts in C order.
fn tensor_counts(values: &Tensor) -> std::result::Result<Vec<i64>, TensorProblem> {
    let flat = values.detach().to_device(Device::Cpu).reshape([-1]);
    let unreadable =
        |e: tch::TchError| TensorProblem::Other(format!("cannot read the values: {e}"));
    match values.kind() {
        Kind::Bool | Kind::Uint8 | Kind::Int8 | Kind::Int16 | Kind::Int | Kind::Int64 => {
            Vec::<i64>::try_from(&flat)
                .map_err(unreadable)?
                .into_iter()
                .enumerate()
                .map(|(i, x)| {
                    check_int(x as i128).map_err(|b| TensorProblem::Value(i, b, x.to_string()))
                })
                .collect()
        }
        // Every one of these kinds converts to f64 exactly.
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double => Vec::<f64>::try_from(&flat)
            .map_err(unreadable)?
            .into_iter()
            .enumerate()
            .map(|(i, x)| check_float(x).map_err(|b| TensorProblem::Value(i, b, x.to_string())))
            .collect(),
        other => Err(TensorProblem::Other(format!(
            "a count table needs a real or bool tensor, got kind {other:?}"
        ))),
    }
}

/// Where C-order element `index` of an array of `shape` (rows first) sits:
/// `7 [row 3, column 1]`, with the item's own index when an item has several dimensions.
fn element_place(index: usize, shape: &[i64], multi_index: bool) -> String {
    let d: usize = shape[1..]
        .iter()
        .map(|&s| s as usize)
        .product::<usize>()
        .max(1);
    let (row, column) = (index / d, index % d);
    let mut place = format!("{index} [row {row}, column {column}");
    if multi_index && shape.len() > 2 {
        let mut rest = column;
        let mut idx = vec![0usize; shape.len() - 1];
        for (k, &s) in shape[1..].iter().enumerate().rev() {
            idx[k] = rest % s as usize;
            rest /= s as usize;
        }
        let idx: Vec<String> = idx.iter().map(|i| i.to_string()).collect();
        place.push_str(&format!(" = item ({})", idx.join(", ")));
    }
    place.push(']');
    place
}

// ---------------------------------------------------------------------------------------------
// Text

/// The bytes as text, or why they cannot be a text table (binary data, known containers).
fn as_text(bytes: &[u8]) -> std::result::Result<&str, String> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Err("a ZIP archive; an .npz? save one array with np.save instead".into());
    }
    if bytes.starts_with(b"\x1f\x8b") {
        return Err("gzip-compressed; decompress it first".into());
    }
    // Offsets in messages count from the start of the file, byte-order mark included.
    let bom = if bytes.starts_with(b"\xef\xbb\xbf") {
        3
    } else {
        0
    };
    let bytes = &bytes[bom..];
    if let Some(at) = bytes
        .iter()
        .position(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7f)
    {
        return Err(format!(
            "binary data: byte 0x{:02x} at offset {} is neither text nor the .npy magic",
            bytes[at],
            at + bom
        ));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text: invalid byte at offset {}",
            e.valid_up_to() + bom
        )
    })
}

/// How the fields of a line are separated.
#[derive(Clone, Copy)]
enum Delimiter {
    Char(char),
    Whitespace,
}

impl Delimiter {
    fn detect(path: &Path, first_line: &str) -> Delimiter {
        let tsv = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("tsv"));
        if tsv {
            Delimiter::Char('\t')
        } else if first_line.contains(',') {
            Delimiter::Char(',')
        } else if first_line.contains('\t') {
            Delimiter::Char('\t')
        } else if first_line.contains(';') {
            Delimiter::Char(';')
        } else if first_line.contains(' ') {
            Delimiter::Whitespace
        } else {
            // One field per line: any delimiter splits nothing.
            Delimiter::Char(',')
        }
    }
}

/// One field of a line: its trimmed, unquoted text and whether it was quoted.
struct Field<'a> {
    text: Cow<'a, str>,
    quoted: bool,
}

/// Split a trimmed, non-empty line into fields. Quotes follow CSV: `"a,b"` is one field and
/// `""` inside quotes is one `"`. The error is the message after `FILE:LINE: `.
fn split_line<'a>(
    line: &'a str,
    delimiter: Delimiter,
    out: &mut Vec<Field<'a>>,
) -> std::result::Result<(), String> {
    out.clear();
    let plain = |s: &'a str| Field {
        text: Cow::Borrowed(s.trim()),
        quoted: false,
    };
    match delimiter {
        Delimiter::Whitespace => out.extend(line.split_whitespace().map(|s| unquote(s.trim()))),
        Delimiter::Char(c) if !line.contains('"') => out.extend(line.split(c).map(plain)),
        Delimiter::Char(c) => {
            let mut rest = line;
            loop {
                let trimmed = rest.trim_start();
                if let Some(inner) = trimmed.strip_prefix('"') {
                    let mut text = String::new();
                    let mut chars = inner.char_indices();
                    let after = loop {
                        match chars.next() {
                            None => return Err("a quoted field has no closing quote".into()),
                            Some((i, '"')) => {
                                if inner[i + 1..].starts_with('"') {
                                    text.push('"');
                                    chars.next();
                                } else {
                                    break &inner[i + 1..];
                                }
                            }
                            Some((_, ch)) => text.push(ch),
                        }
                    };
                    out.push(Field {
                        text: Cow::Owned(text),
                        quoted: true,
                    });
                    let after = after.trim_start();
                    match after.strip_prefix(c) {
                        Some(next) => rest = next,
                        None if after.is_empty() => return Ok(()),
                        None => {
                            return Err(format!(
                                "unexpected text {:?} after a quoted field",
                                clip(after)
                            ))
                        }
                    }
                } else {
                    match rest.find(c) {
                        Some(at) => {
                            out.push(plain(&rest[..at]));
                            rest = &rest[at + c.len_utf8()..];
                        }
                        None => {
                            out.push(plain(rest));
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn unquote(s: &str) -> Field<'_> {
    match s
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
    {
        Some(inner) => Field {
            text: Cow::Owned(inner.replace("\"\"", "\"")),
            quoted: true,
        },
        None => Field {
            text: Cow::Borrowed(s),
            quoted: false,
        },
    }
}

/// `FILE:LINE` as the path of an error, so that it displays as `FILE:LINE: message`.
fn at_line(path: &Path, line: usize, message: String) -> Error {
    Error::format(PathBuf::from(format!("{}:{line}", path.display())), message)
}

fn parse_text(path: &Path, text: &str) -> Result<CountTable> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Classic Mac OS line ends (CR alone) are lines too.
    let unified;
    let text = if text.contains('\r') && !text.contains('\n') {
        unified = text.replace('\r', "\n");
        unified.as_str()
    } else {
        text
    };
    let mut delimiter = None;
    // (columns, the line that set their number)
    let mut layout: Option<(Vec<String>, usize)> = None;
    let mut values: Vec<i64> = Vec::new();
    let mut rows = 0usize;
    let mut fields = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let delimiter = *delimiter.get_or_insert_with(|| Delimiter::detect(path, line));
        split_line(line, delimiter, &mut fields).map_err(|m| at_line(path, line_no, m))?;
        let Some((columns, expected_from)) = &layout else {
            let header = fields
                .iter()
                .any(|f| f.quoted || (!f.text.is_empty() && f.text.parse::<f64>().is_err()));
            let columns = if header {
                fields
                    .iter()
                    .enumerate()
                    .map(|(j, f)| match f.text.as_ref() {
                        "" => format!("c{j}"),
                        name => name.to_owned(),
                    })
                    .collect()
            } else {
                default_columns(fields.len())
            };
            if header {
                // --given and the written header name columns, so a name must say which.
                let columns: &Vec<String> = &columns;
                for (j, name) in columns.iter().enumerate() {
                    if let Some(k) = columns[..j].iter().position(|c| c == name) {
                        return Err(at_line(
                            path,
                            line_no,
                            format!(
                                "the header names column {} and column {} both {name:?}; \
                                 column names must differ",
                                k + 1,
                                j + 1
                            ),
                        ));
                    }
                }
            }
            layout = Some((columns, line_no));
            if header {
                continue;
            }
            let (columns, _) = layout.as_ref().expect("just set");
            parse_row(path, line_no, &fields, columns, &mut values)?;
            rows += 1;
            continue;
        };
        if fields.len() != columns.len() {
            let n = fields.len();
            return Err(at_line(
                path,
                line_no,
                format!(
                    "{n} value{}, expected {} (the number in line {expected_from})",
                    if n == 1 { "" } else { "s" },
                    columns.len()
                ),
            ));
        }
        parse_row(path, line_no, &fields, columns, &mut values)?;
        rows += 1;
    }
    let Some((columns, _)) = layout.filter(|_| rows > 0) else {
        return Err(Error::format(path, "no rows of counts"));
    };
    let d = columns.len();
    Ok(CountTable {
        values: Tensor::from_slice(&values).reshape([rows as i64, d as i64]),
        columns,
        item_shape: vec![d as i64],
    })
}

fn parse_row(
    path: &Path,
    line_no: usize,
    fields: &[Field<'_>],
    columns: &[String],
    values: &mut Vec<i64>,
) -> Result<()> {
    for (j, field) in fields.iter().enumerate() {
        let v = parse_count(&field.text).map_err(|why| {
            at_line(
                path,
                line_no,
                format!("column {} ({}): {why}", columns[j], j + 1),
            )
        })?;
        values.push(v);
    }
    Ok(())
}

/// A column name as a header field that reads back as the same name: quoted when it holds the
/// delimiter or a quote, has outer spaces, starts a comment, is empty, or looks like a number
/// (an all-numeric header would be read back as a row of data).
fn header_field(name: &str, delimiter: char) -> std::result::Result<String, String> {
    if name.contains(['\n', '\r']) {
        return Err(format!(
            "column name {:?} holds a line break, which a CSV header cannot",
            clip(name)
        ));
    }
    let needs_quotes = name.is_empty()
        || name.contains(delimiter)
        || name.contains('"')
        || name.starts_with('#')
        || name.trim() != name
        || name.parse::<f64>().is_ok();
    Ok(if needs_quotes {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_owned()
    })
}

// ---------------------------------------------------------------------------------------------
// NPY

/// The element types a count table can be read from.
#[derive(Clone, Copy, Debug)]
enum Dtype {
    Bool,
    Int(usize),
    Uint(usize),
    Float(usize),
}

impl Dtype {
    fn width(self) -> usize {
        match self {
            Dtype::Bool => 1,
            Dtype::Int(w) | Dtype::Uint(w) | Dtype::Float(w) => w,
        }
    }
}

const SUPPORTED_DTYPES: &str = "bool, int8/16/32/64, uint8/16/32/64 or float16/32/64";

/// A dtype string such as `<i8` as (type, big-endian).
fn parse_descr(descr: &str) -> std::result::Result<(Dtype, bool), String> {
    let unsupported = || format!("unsupported dtype {descr:?}; expected {SUPPORTED_DTYPES}");
    let (big, code) = match descr.as_bytes().first() {
        Some(b'<') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        Some(b'=') => (cfg!(target_endian = "big"), &descr[1..]),
        Some(b'|') => (false, &descr[1..]),
        _ => (false, descr),
    };
    if code.starts_with('O') {
        return Err(format!(
            "holds Python objects (dtype {descr:?}), not numbers; save a numeric array, \
             e.g. np.save(path, a.astype(np.int64))"
        ));
    }
    let kind = code.chars().next().ok_or_else(unsupported)?;
    let width: usize = code[kind.len_utf8()..].parse().map_err(|_| unsupported())?;
    let dtype = match (kind, width) {
        ('b', 1) => Dtype::Bool,
        ('i', 1 | 2 | 4 | 8) => Dtype::Int(width),
        ('u', 1 | 2 | 4 | 8) => Dtype::Uint(width),
        ('f', 2 | 4 | 8) => Dtype::Float(width),
        _ => return Err(unsupported()),
    };
    if descr.starts_with('|') && width > 1 {
        return Err(unsupported());
    }
    Ok((dtype, big))
}

/// The Python literals an `.npy` header dictionary is written in.
#[derive(Debug)]
enum Py {
    Str(String),
    Bool(bool),
    Int(u64),
    None,
    Tuple(Vec<Py>),
    List(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

/// A small parser of Python literals, enough for any header `np.save` has ever written.
struct PyParser<'a> {
    s: &'a str,
    at: usize,
}

impl PyParser<'_> {
    fn skip_space(&mut self) {
        let rest = &self.s[self.at..];
        self.at += rest.len() - rest.trim_start().len();
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.s[self.at..].chars().next()
    }

    fn expect(&mut self, c: char) -> std::result::Result<(), String> {
        match self.peek() {
            Some(found) if found == c => {
                self.at += c.len_utf8();
                Ok(())
            }
            Some(found) => Err(format!(
                "expected '{c}' at offset {}, found '{found}'",
                self.at
            )),
            None => Err(format!(
                "expected '{c}' at offset {}, found the end",
                self.at
            )),
        }
    }

    fn value(&mut self) -> std::result::Result<Py, String> {
        match self.peek() {
            Some(q @ ('\'' | '"')) => {
                self.at += 1;
                let rest = &self.s[self.at..];
                let end = rest
                    .find(q)
                    .ok_or_else(|| format!("a string at offset {} has no end", self.at))?;
                self.at += end + 1;
                Ok(Py::Str(rest[..end].to_owned()))
            }
            Some('(') => self.sequence('(', ')').map(Py::Tuple),
            Some('[') => self.sequence('[', ']').map(Py::List),
            Some('{') => {
                self.expect('{')?;
                let mut items = Vec::new();
                while self.peek() != Some('}') {
                    let key = self.value()?;
                    self.expect(':')?;
                    let value = self.value()?;
                    items.push((key, value));
                    if self.peek() != Some('}') {
                        self.expect(',')?;
                    }
                }
                self.expect('}')?;
                Ok(Py::Dict(items))
            }
            Some(c) if c.is_ascii_alphanumeric() => {
                let rest = &self.s[self.at..];
                let end = rest
                    .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .unwrap_or(rest.len());
                let word = &rest[..end];
                self.at += end;
                match word {
                    "True" => Ok(Py::Bool(true)),
                    "False" => Ok(Py::Bool(false)),
                    "None" => Ok(Py::None),
                    // Python 2 wrote long integers as `3L`.
                    _ => word
                        .strip_suffix('L')
                        .unwrap_or(word)
                        .parse()
                        .map(Py::Int)
                        .map_err(|_| format!("unexpected {word:?} in the header")),
                }
            }
            Some(c) => Err(format!("unexpected '{c}' at offset {}", self.at)),
            None => Err("the header ends early".into()),
        }
    }

    fn sequence(&mut self, open: char, close: char) -> std::result::Result<Vec<Py>, String> {
        self.expect(open)?;
        let mut items = Vec::new();
        while self.peek() != Some(close) {
            items.push(self.value()?);
            if self.peek() != Some(close) {
                self.expect(',')?;
            }
        }
        self.expect(close)?;
        Ok(items)
    }
}

/// What an `.npy` header says: dtype, byte order, layout, shape, and where the data starts.
struct NpyHeader {
    dtype: Dtype,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<u64>,
    data_start: usize,
}

/// Parse the preamble and header dictionary of an `.npy` file; the error is the message after
/// `FILE: `.
fn parse_npy_header(bytes: &[u8]) -> std::result::Result<NpyHeader, String> {
    let (major, minor) = match bytes.get(6..8) {
        Some(v) => (v[0], v[1]),
        None => return Err("truncated: the .npy preamble ends early".into()),
    };
    let (length, start) = match (major, minor) {
        (1, 0) => (
            bytes
                .get(8..10)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize),
            10,
        ),
        (2 | 3, 0) => (
            bytes
                .get(8..12)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
            12,
        ),
        _ => {
            return Err(format!(
                "unsupported .npy format version {major}.{minor} (expected 1.0, 2.0 or 3.0)"
            ))
        }
    };
    let length = length.ok_or("truncated: the .npy preamble ends early")?;
    let header = bytes.get(start..start + length).ok_or_else(|| {
        format!(
            "truncated: the .npy header should be {length} bytes but only {} follow",
            bytes.len() - start.min(bytes.len())
        )
    })?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let bad_header =
        |why: String| format!("invalid .npy header ({why}): {:?}", clip(header.trim()));
    let mut parser = PyParser { s: header, at: 0 };
    let dict = match parser.value().map_err(bad_header)? {
        Py::Dict(items) => items,
        _ => return Err(bad_header("not a dictionary".into())),
    };
    let get = |key: &str| {
        dict.iter()
            .find(|(k, _)| matches!(k, Py::Str(s) if s == key))
            .map(|(_, v)| v)
            .ok_or_else(|| bad_header(format!("no '{key}'")))
    };
    let (dtype, big_endian) = match get("descr")? {
        Py::Str(descr) => parse_descr(descr)?,
        Py::List(fields) => {
            let names: Vec<&str> = fields
                .iter()
                .filter_map(|f| match f {
                    Py::Tuple(parts) => match parts.first() {
                        Some(Py::Str(name)) => Some(name.as_str()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
            return Err(format!(
                "holds a structured array (fields {}); count data must be one plain numeric \
                 array of {SUPPORTED_DTYPES}",
                names.join(", ")
            ));
        }
        _ => return Err(bad_header("'descr' is not a dtype string".into())),
    };
    let fortran_order = match get("fortran_order")? {
        Py::Bool(b) => *b,
        _ => return Err(bad_header("'fortran_order' is not True or False".into())),
    };
    let shape = match get("shape")? {
        Py::Tuple(dims) => dims
            .iter()
            .map(|d| match d {
                Py::Int(v) => Ok(*v),
                _ => Err(bad_header("'shape' is not a tuple of integers".into())),
            })
            .collect::<std::result::Result<Vec<u64>, String>>()?,
        _ => return Err(bad_header("'shape' is not a tuple".into())),
    };
    Ok(NpyHeader {
        dtype,
        big_endian,
        fortran_order,
        shape,
        data_start: start + length,
    })
}

/// Decode `W`-byte elements with `f`, stopping at the first bad one: (storage index, why,
/// the value as shown in the message).
fn decode<const W: usize>(
    data: &[u8],
    f: impl Fn([u8; W]) -> std::result::Result<i64, (Bad, String)>,
) -> std::result::Result<Vec<i64>, (usize, Bad, String)> {
    let mut values = Vec::with_capacity(data.len() / W);
    for (i, chunk) in data.chunks_exact(W).enumerate() {
        let mut bytes = [0u8; W];
        bytes.copy_from_slice(chunk);
        values.push(f(bytes).map_err(|(bad, shown)| (i, bad, shown))?);
    }
    Ok(values)
}

/// IEEE half precision to f64 (exact).
fn half_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((h >> 10) & 0x1f);
    let fraction = f64::from(h & 0x3ff);
    let magnitude = match exponent {
        0 => fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + fraction / 1024.0) * 2f64.powi(e - 15),
    };
    sign * magnitude
}

fn decode_values(
    data: &[u8],
    dtype: Dtype,
    big: bool,
) -> std::result::Result<Vec<i64>, (usize, Bad, String)> {
    macro_rules! int {
        ($t:ty, $w:literal) => {
            decode::<$w>(data, |b| {
                let v = if big {
                    <$t>::from_be_bytes(b)
                } else {
                    <$t>::from_le_bytes(b)
                };
                check_int(v as i128).map_err(|bad| (bad, v.to_string()))
            })
        };
    }
    macro_rules! float {
        ($t:ty, $w:literal) => {
            decode::<$w>(data, |b| {
                let v = if big {
                    <$t>::from_be_bytes(b)
                } else {
                    <$t>::from_le_bytes(b)
                };
                check_float(f64::from(v)).map_err(|bad| (bad, v.to_string()))
            })
        };
    }
    match dtype {
        // NumPy stores True as 1; any other non-zero byte still means True.
        Dtype::Bool => decode::<1>(data, |b| Ok(i64::from(b[0] != 0))),
        Dtype::Int(1) => int!(i8, 1),
        Dtype::Int(2) => int!(i16, 2),
        Dtype::Int(4) => int!(i32, 4),
        Dtype::Int(_) => int!(i64, 8),
        Dtype::Uint(1) => int!(u8, 1),
        Dtype::Uint(2) => int!(u16, 2),
        Dtype::Uint(4) => int!(u32, 4),
        Dtype::Uint(_) => int!(u64, 8),
        Dtype::Float(2) => decode::<2>(data, |b| {
            let v = half_to_f64(if big {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            });
            check_float(v).map_err(|bad| (bad, v.to_string()))
        }),
        Dtype::Float(4) => float!(f32, 4),
        Dtype::Float(_) => float!(f64, 8),
    }
}

fn parse_npy(path: &Path, bytes: &[u8]) -> Result<CountTable> {
    let fail = |message: String| Error::format(path, message);
    let header = parse_npy_header(bytes).map_err(fail)?;
    let shape = &header.shape;
    if shape.is_empty() {
        return Err(fail(
            "shape () is a single number, not a table of counts (expected (N,), (N, D) or \
             (N, ...))"
                .into(),
        ));
    }
    let shape_text = format!("{shape:?}").replace('[', "(").replace(']', ")");
    let too_big = || fail(format!("shape {shape_text} is too large"));
    let d = shape[1..]
        .iter()
        .try_fold(1u64, |acc, &s| acc.checked_mul(s))
        .ok_or_else(too_big)?;
    let n = shape[0];
    let total = n.checked_mul(d).ok_or_else(too_big)?;
    let width = header.dtype.width() as u64;
    let need = total.checked_mul(width).ok_or_else(too_big)?;
    // Shapes must also fit i64 (tensor sizes) and usize (indexing).
    if i64::try_from(need).is_err() || usize::try_from(need).is_err() {
        return Err(too_big());
    }
    let data = &bytes[header.data_start..];
    if (data.len() as u64) < need {
        return Err(fail(format!(
            "truncated: the header promises {total} values ({need} bytes) but only {} bytes \
             follow",
            data.len()
        )));
    }
    if data.len() as u64 > need {
        return Err(fail(format!(
            "{} bytes follow the {total} values ({need} bytes) the header promises; is this \
             more than one array in one file?",
            data.len() as u64 - need
        )));
    }
    if n == 0 {
        return Err(fail("no rows of counts".into()));
    }
    if d == 0 {
        return Err(fail(format!(
            "shape {shape_text} has examples of zero values; a count table needs at least one \
             column"
        )));
    }
    let dims: Vec<i64> = shape.iter().map(|&s| s as i64).collect();
    let values =
        decode_values(data, header.dtype, header.big_endian).map_err(|(storage, bad, shown)| {
            let index = if header.fortran_order {
                fortran_to_c_index(storage, &dims)
            } else {
                storage
            };
            let place = element_place(index, &dims, true);
            fail(format!("element {place} {}", bad.describe_element(&shown)))
        })?;
    let (n, d) = (n as i64, d as i64);
    let tensor = Tensor::from_slice(&values);
    let tensor = if header.fortran_order && dims.len() > 1 {
        // Fortran order stores the first axis fastest: the C-order array of the reversed
        // shape, whose axes are then reversed back.
        let reversed: Vec<i64> = dims.iter().rev().copied().collect();
        let axes: Vec<i64> = (0..dims.len() as i64).rev().collect();
        tensor
            .reshape(&reversed[..])
            .permute(&axes[..])
            .contiguous()
    } else {
        tensor
    };
    let item_shape = if dims.len() > 2 {
        dims[1..].to_vec()
    } else {
        vec![d]
    };
    Ok(CountTable {
        values: tensor.reshape([n, d]),
        columns: default_columns(d as usize),
        item_shape,
    })
}

/// The C-order index of the element stored at `storage` in a Fortran-order array of `shape`.
fn fortran_to_c_index(storage: usize, shape: &[i64]) -> usize {
    // Peel the multi-index off the storage index first axis first (Fortran order), then
    // ravel it again last axis fastest (C order).
    let mut rest = storage;
    let mut multi = Vec::with_capacity(shape.len());
    for &dim in shape {
        multi.push(rest % dim as usize);
        rest /= dim as usize;
    }
    multi
        .iter()
        .zip(shape)
        .fold(0usize, |index, (&i, &dim)| index * dim as usize + i)
}

/// A version 1.0 (or 2.0 when the header is huge) `.npy` preamble for `<i8` C-order data.
fn npy_header(shape: &[i64]) -> Vec<u8> {
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '<i8', 'fortran_order': False, 'shape': {dims}, }}");
    // The data starts on a 64-byte boundary, and the header ends with a newline, as np.save does.
    let padded = |prefix: usize| {
        let unpadded = prefix + dict.len() + 1;
        dict.len() + (64 - unpadded % 64) % 64 + 1
    };
    let mut out = NPY_MAGIC.to_vec();
    if let Ok(length) = u16::try_from(padded(10)) {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&length.to_le_bytes());
    } else {
        // Version 2.0 only widens the length field to 4 bytes.
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(padded(12) as u32).to_le_bytes());
    }
    let length = if out[6] == 1 { padded(10) } else { padded(12) };
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + length - dict.len() - 1, b' ');
    out.push(b'\n');
    out
}
