//! Python/pandas string semantics the reference relies on: pandas' default NA strings, its
//! numeric column inference (so `str(x)` of a cell matches), `str.isspace`, and `repr(float)`.

/// pandas' default `na_values` (`pandas._libs.parsers.STR_NA_VALUES`).
const NA_STRINGS: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null",
];

/// Whether pandas reads this cell text as NaN.
pub fn is_na(s: &str) -> bool {
    NA_STRINGS.contains(&s)
}

/// Python's `str.isspace` for one character (Unicode White_Space plus U+001C..U+001F).
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` with no argument.
pub fn py_split(s: &str) -> Vec<&str> {
    s.split(py_isspace).filter(|t| !t.is_empty()).collect()
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form outside 1e-4 <= |x| < 1e16.
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{x:e}"); // e.g. "-1.2345e-5", shortest round-trip digits
    let (mant, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mant) = mant.strip_prefix('-').map(|m| ("-", m)).unwrap_or(("", mant));
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let s = if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                format!("{digits}{}.0", "0".repeat((int_len - n) as usize))
            } else {
                format!("{}.{}", &digits[..int_len as usize], &digits[int_len as usize..])
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

fn parse_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

fn parse_float(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() || t.bytes().any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') {
        return None; // no "inf"/"nan" words: those are NA strings or text here
    }
    t.parse().ok()
}

/// The value of each cell of one column as `str(x)` would print it after pandas read the
/// column: `None` for NaN; a column whose non-NA cells are all integers becomes int64 (or
/// float64 when it also has NaN), one whose cells are all numbers becomes float64, else strings.
pub fn column_strings(raw: &[Option<String>]) -> Vec<Option<String>> {
    let cells: Vec<Option<&str>> = raw.iter().map(|c| c.as_deref().filter(|s| !is_na(s))).collect();
    let present: Vec<&str> = cells.iter().flatten().copied().collect();
    if present.is_empty() {
        return cells.iter().map(|_| None).collect();
    }
    let has_na = present.len() < cells.len();
    if present.iter().all(|s| parse_int(s).is_some()) {
        return cells
            .iter()
            .map(|c| {
                c.map(|s| {
                    let v = parse_int(s).unwrap();
                    if has_na {
                        py_float_repr(v as f64)
                    } else {
                        v.to_string()
                    }
                })
            })
            .collect();
    }
    if present.iter().all(|s| parse_float(s).is_some()) {
        return cells
            .iter()
            .map(|c| c.map(|s| py_float_repr(parse_float(s).unwrap())))
            .collect();
    }
    cells.iter().map(|c| c.map(str::to_string)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        for (x, s) in [
            (0.5, "0.5"),
            (1.0, "1.0"),
            (0.7835051546391752, "0.7835051546391752"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (-2.25, "-2.25"),
            (1e22, "1e+22"),
            (100.0, "100.0"),
            (2.0 / 3.0, "0.6666666666666666"),
        ] {
            assert_eq!(py_float_repr(x), s, "{x}");
        }
    }

    #[test]
    fn pandas_columns() {
        let col = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        assert_eq!(
            column_strings(&col(&["1", "2"])),
            vec![Some("1".into()), Some("2".into())]
        );
        assert_eq!(column_strings(&col(&["1", ""])), vec![Some("1.0".into()), None]);
        assert_eq!(
            column_strings(&col(&["1.50", "2"])),
            vec![Some("1.5".into()), Some("2.0".into())]
        );
        assert_eq!(
            column_strings(&col(&["cat", "None", "2"])),
            vec![Some("cat".into()), None, Some("2".into())]
        );
    }

    #[test]
    fn python_split() {
        assert_eq!(py_split(" a\x1cb\u{3000}c  "), vec!["a", "b", "c"]);
    }
}
