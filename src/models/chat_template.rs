//! A checkpoint's own Jinja chat template, rendered the way transformers 4.57 (Sa2VA's pin) does
//! in `processor.apply_chat_template`: Jinja2 with `trim_blocks` + `lstrip_blocks` and loop
//! controls, transformers' `tojson` (Python's `json.dumps`, non-ASCII kept), `raise_exception`,
//! `strftime_now`, Python's string/dict methods, and the tokenizer's special tokens as variables.
//! Sa2VA's Qwen-VL `predict_forward` builds its prompt this way, so a checkpoint whose template
//! differs from Qwen's stock one is prompted as its authors wrote it.

use crate::error::{Error, Result};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use std::path::{Path, PathBuf};

/// The name the template is compiled under (no extension: no auto-escaping, as in transformers).
const NAME: &str = "chat_template";

/// A compiled chat template and the file it came from.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template was read (for messages and `--verbose` logs).
    pub origin: PathBuf,
    /// `bos_token`, `eos_token`, ... as `tokenizer.special_tokens_map` gives them to the template.
    specials: Vec<(String, Value)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The processor's template of a model directory, looked up in transformers 4.57's order:
    /// the legacy `chat_template.json` (it wins when both exist), then `chat_template.jinja`,
    /// then a `chat_template` key in `processor_config.json`. `None` when the directory has none.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let legacy = dir.join("chat_template.json");
        let raw = dir.join("chat_template.jinja");
        let processor = dir.join("processor_config.json");
        let (source, origin) = if legacy.is_file() {
            (json_key(&legacy, "chat_template")?, legacy)
        } else if raw.is_file() {
            let bytes = crate::util::read_file(&raw)?;
            let s = String::from_utf8(bytes).map_err(|_| Error::input(&raw, "the chat template is not UTF-8"))?;
            (Some(s), raw)
        } else if processor.is_file() {
            (json_key(&processor, "chat_template")?, processor)
        } else {
            return Ok(None);
        };
        let Some(source) = source else { return Ok(None) };
        let specials = special_tokens(dir)?;
        Self::new(source, origin, specials).map(Some)
    }

    /// Compile `source` (read from `origin`) with the special tokens given to every render.
    pub fn new(source: String, origin: PathBuf, specials: Vec<(String, Value)>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source)
            .map_err(|e| Error::input(&origin, format!("the chat template does not parse: {}", describe(&e))))?;
        Ok(Self { env, origin, specials })
    }

    /// Render `messages` (the OpenAI-style list `apply_chat_template` takes; maps keep their
    /// key order) with `add_generation_prompt`, `tools` and extra template variables.
    pub fn render(
        &self,
        messages: Value,
        add_generation_prompt: bool,
        tools: Option<Value>,
        extra: &[(String, Value)],
    ) -> Result<String> {
        // render_jinja_template's variables: messages, tools, documents, add_generation_prompt,
        // then the caller's kwargs and the special tokens (later keys win, as in a Python call)
        let mut ctx: Vec<(String, Value)> = vec![
            ("messages".into(), messages),
            ("tools".into(), tools.unwrap_or(Value::from(()))),
            ("documents".into(), Value::from(())),
            ("add_generation_prompt".into(), Value::from(add_generation_prompt)),
        ];
        for (k, v) in extra.iter().chain(self.specials.iter()) {
            ctx.retain(|(key, _)| key != k);
            ctx.push((k.clone(), v.clone()));
        }
        let t = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::input(&self.origin, describe(&e)))?;
        t.render(Value::from_iter(ctx))
            .map_err(|e| Error::input(&self.origin, format!("rendering the chat template: {}", describe(&e))))
    }

    /// The prompt Sa2VA's Qwen-VL `predict_forward` gives the processor: one user turn holding
    /// the image (when there is one), then the text, and the generation prompt.
    pub fn sa2va_turn(&self, text: &str, with_image: bool) -> Result<String> {
        let mut content = Vec::with_capacity(2);
        if with_image {
            content.push(map([("type", Value::from("image")), ("image", Value::from("image"))]));
        }
        content.push(map([("type", Value::from("text")), ("text", Value::from(text))]));
        let turn = map([("role", Value::from("user")), ("content", Value::from(content))]);
        self.render(Value::from(vec![turn]), true, None, &[])
    }
}

/// A map keeping the given key order (as a Python dict literal does).
fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::from_iter(entries.into_iter().map(|(k, v)| (k.to_string(), v)))
}

/// minijinja's message (it names the template and line: "(in chat_template:2)") with its causes.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// `key` of a JSON object file: `Some` string, `None` when absent or null.
fn json_key(path: &Path, key: &str) -> Result<Option<String>> {
    let v: serde_json::Value = serde_json::from_slice(&crate::util::read_file(path)?)
        .map_err(|e| Error::input(path, format!("not valid JSON: {e}")))?;
    match v.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Object(m)) if m.contains_key("default") => {
            Ok(m.get("default").and_then(|d| d.as_str()).map(str::to_owned))
        }
        Some(other) => Err(Error::input(
            path,
            format!("`{key}` should be a template string, found {}", kind(other)),
        )),
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `tokenizer.special_tokens_map`: the set special tokens of tokenizer_config.json (a string or
/// an AddedToken object's `content`), special_tokens_map.json filling what it leaves out.
fn special_tokens(dir: &Path) -> Result<Vec<(String, Value)>> {
    const KEYS: [&str; 8] = [
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
        "additional_special_tokens",
    ];
    let mut out: Vec<(String, Value)> = Vec::new();
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = dir.join(file);
        if !path.is_file() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&crate::util::read_file(&path)?)
            .map_err(|e| Error::input(&path, format!("not valid JSON: {e}")))?;
        let content = |t: &serde_json::Value| match t {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_owned),
            _ => None,
        };
        for k in KEYS {
            if out.iter().any(|(key, _)| key == k) {
                continue;
            }
            let value = match v.get(k) {
                Some(serde_json::Value::Array(list)) if k == "additional_special_tokens" => {
                    Some(Value::from(list.iter().filter_map(content).collect::<Vec<_>>()))
                }
                Some(t) if k != "additional_special_tokens" => content(t).map(Value::from),
                _ => None,
            };
            if let Some(value) = value {
                out.push((k.into(), value));
            }
        }
    }
    Ok(out)
}

/// Jinja2's `{{ x }}`: Python's `str(x)` (`True`, `None`, `1e-05`, `['a', 1]`); strings as they are.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind as K;
    match value.kind() {
        K::None | K::Bool | K::Number | K::Seq | K::Map => {
            let mut s = String::new();
            py_repr(value, &mut s)?;
            out.write_str(&s)
                .map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "write failed"))
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Python's `repr` of a template value (what `str()` of a container prints for its items).
fn py_repr(v: &Value, out: &mut String) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind as K;
    match v.kind() {
        K::Undefined | K::None => out.push_str("None"),
        K::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        K::Number => out.push_str(&py_number(v)),
        K::String => {
            let s = v.as_str().unwrap_or_default();
            let q = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            out.push(q);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == q => {
                        out.push('\\');
                        out.push(c)
                    }
                    c => out.push(c),
                }
            }
            out.push(q);
        }
        K::Map => {
            out.push('{');
            for (i, k) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&k, out)?;
                out.push_str(": ");
                py_repr(&v.get_item(&k)?, out)?;
            }
            out.push('}');
        }
        K::Seq | K::Iterable => {
            out.push('[');
            for (i, x) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&x, out)?;
            }
            out.push(']');
        }
        _ => out.push_str(&v.to_string()),
    }
    Ok(())
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent, separators=...,
/// sort_keys=...)`, Python's separators and float spelling, no HTML escaping.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let bad = |m: &str| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {m}"));
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        Some(i) if !i.is_none() => match i.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => Some(
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("indent must be a number or a string"))?,
            ),
        },
        _ => None,
    };
    let (item, key) = match separators.as_deref() {
        Some([a, b]) => (a.clone(), b.clone()),
        Some(_) => return Err(bad("separators must be a pair")),
        // json.dumps: (', ', ': ') without indent, (',', ': ') with one
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let mut out = String::new();
    let f = Dump {
        indent: indent.as_deref(),
        item: &item,
        key: &key,
        sort: sort_keys.unwrap_or(false),
    };
    f.dump(value, &mut out, 0)?;
    Ok(Value::from_safe_string(out))
}

struct Dump<'a> {
    indent: Option<&'a str>,
    item: &'a str,
    key: &'a str,
    sort: bool,
}

impl Dump<'_> {
    fn newline(&self, out: &mut String, depth: usize) {
        if let Some(ind) = self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    }

    /// `open` items `close`, each item on its own line when indenting; `[]` / `{}` when empty.
    fn bracketed(
        &self,
        out: &mut String,
        depth: usize,
        (open, close): (char, char),
        items: &[Value],
        mut item: impl FnMut(&Value, &mut String) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        for (i, x) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(self.item);
            }
            self.newline(out, depth + 1);
            item(x, out)?;
        }
        self.newline(out, depth);
        out.push(close);
        Ok(())
    }

    fn dump(&self, v: &Value, out: &mut String, depth: usize) -> std::result::Result<(), minijinja::Error> {
        use minijinja::value::ValueKind as K;
        match v.kind() {
            K::None => out.push_str("null"),
            K::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            K::Number => {
                let n = py_number(v);
                // json.dumps spells the non-finite floats this way too
                out.push_str(&n.replace("nan", "NaN").replace("inf", "Infinity"));
            }
            K::String => py_string(v.as_str().unwrap_or_default(), out),
            K::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort {
                    keys.sort();
                }
                self.bracketed(out, depth, ('{', '}'), &keys, |k, out| {
                    // json.dumps turns None/bool/number keys into their JSON spelling
                    match k.as_str() {
                        Some(s) => py_string(s, out),
                        None => {
                            let mut s = String::new();
                            self.dump(k, &mut s, 0)?;
                            py_string(&s, out)
                        }
                    }
                    out.push_str(self.key);
                    self.dump(&v.get_item(k)?, out, depth + 1)
                })?;
            }
            K::Seq | K::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.bracketed(out, depth, ('[', ']'), &items, |x, out| self.dump(x, out, depth + 1))?;
            }
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: Object of type {other} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }
}

/// Python's `repr` of a number: integers as they are, floats the shortest round-trip way
/// (`2.5`, `1e-05`, `1e+16`, `inf`, `nan`).
fn py_number(v: &Value) -> String {
    if v.is_integer() {
        return v.to_string();
    }
    let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // repr: scientific when the decimal exponent is < -4 or >= 16
    let exp = if f == 0.0 { 0 } else { f.abs().log10().floor() as i32 };
    if (-4..16).contains(&exp) {
        let s = format!("{f:?}");
        if s.contains('e') {
            format!("{f}")
        } else {
            s
        }
    } else {
        let s = format!("{f:e}");
        let (mant, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        format!("{mant}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
    }
}

/// A JSON string as `json.dumps(..., ensure_ascii=False)` writes it.
fn py_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `datetime.now().strftime(format)` in UTC for the common directives (%Y %m %d %H %M %S %y %b
/// %B %a %A %j %%); an unknown directive is an error, not a silent difference.
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, &format).map(Value::from)
}

fn strftime(secs: i64, format: &str) -> std::result::Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (y, m, d) = crate::util::civil_from_days(days);
    let (m, d) = (i64::from(m), i64::from(d));
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let wday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let mut out = String::new();
    let mut it = format.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[wday]),
            Some('a') => out.push_str(&DAYS[wday][..3]),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(src: &str) -> ChatTemplate {
        ChatTemplate::new(src.into(), PathBuf::from("t.jinja"), Vec::new()).unwrap()
    }

    #[test]
    fn strftime_known_dates() {
        // 2026-12-01 21:35:40 UTC was a Tuesday, day 335
        assert_eq!(
            strftime(1_796_160_940, "%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %%").unwrap(),
            "2026-12-01 21:35:40 Tue Tuesday Dec December 335 26 %"
        );
        assert_eq!(strftime(951_782_400, "%d %B %Y %j").unwrap(), "29 February 2000 060");
        assert!(strftime(0, "%Q").is_err());
    }

    #[test]
    fn python_json_and_str_spelling() {
        let t = tpl("{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(separators=[',', ':']) }}|{{ x }}|{{ b }} {{ n }} {{ f }}");
        let x: Value = serde_json::from_str(r#"{"z": [1, 2.5, 1e-5, null], "é<>": "q\"\n'"}"#).unwrap();
        let extra = vec![
            ("x".to_string(), x),
            ("b".to_string(), Value::from(true)),
            ("n".to_string(), Value::from(())),
            ("f".to_string(), Value::from(1e16)),
        ];
        let out = t.render(Value::from(Vec::<Value>::new()), false, None, &extra).unwrap();
        assert_eq!(
            out,
            "{\"z\": [1, 2.5, 1e-05, null], \"é<>\": \"q\\\"\\n'\"}|{\n  \"z\": [\n    1,\n    2.5,\n    1e-05,\n    null\n  ],\n  \"é<>\": \"q\\\"\\n'\"\n}|{\"z\":[1,2.5,1e-05,null],\"é<>\":\"q\\\"\\n'\"}|{'z': [1, 2.5, 1e-05, None], 'é<>': 'q\"\\n\\''}|True None 1e+16"
        );
    }

    #[test]
    fn errors_name_the_file() {
        let e = ChatTemplate::new("{% if %}".into(), PathBuf::from("x/chat_template.jinja"), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x/chat_template.jinja") && e.contains("does not parse"),
            "{e}"
        );
        let t = tpl("{{ raise_exception('no system role') }}");
        let e = t
            .render(Value::from(Vec::<Value>::new()), true, None, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no system role"), "{e}");
    }
}
