//! Params: `[params]` tables, `--set` overrides, `${params.…}` / `${matrix.…}` substitution.

use std::collections::BTreeMap;

/// Parse `KEY=VALUE` from `--set`; the value is read as a TOML value, else taken as a string.
pub fn parse_set(s: &str) -> Result<(String, toml::Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`--set {s}`: expected KEY=VALUE, e.g. `--set train.lr=0.01`"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("`--set {s}`: the key is empty"));
    }
    let value = value.trim();
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    Ok((key.to_string(), parsed))
}

/// Look a dotted key up in a params table.
pub fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut cur = table.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_table()?.get(p)?;
    }
    Some(cur)
}

/// Set a dotted key that already exists (overrides never invent keys: a typo must not pass).
pub fn set_existing(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return match cur.get_mut(*p) {
                Some(slot) => {
                    *slot = value;
                    Ok(())
                }
                None => Err(unknown_key_msg(key, cur)),
            };
        }
        cur = match cur.get_mut(*p) {
            Some(toml::Value::Table(t)) => t,
            _ => {
                return Err(format!(
                    "unknown param `{key}`: `{}` is not a table of params",
                    parts[..=i].join(".")
                ));
            }
        };
    }
    Ok(())
}

/// Override a param that exists, keeping its type: a number stays a number (an integer may
/// become a float and back), a string a string, and so on; a value of another type is an
/// error naming the key and both types. `from_text` (a `--set` value) lets a string param
/// take the text as given: `--set tag=123` sets the string "123".
pub fn override_param(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
    from_text: bool,
) -> Result<(), String> {
    use toml::Value as V;
    let value = match (lookup(table, key), value) {
        (
            Some(V::String(_)),
            v @ (V::Integer(_) | V::Float(_) | V::Boolean(_) | V::Datetime(_)),
        ) if from_text => V::String(v.to_string()),
        (_, v) => v,
    };
    if let Some(old) = lookup(table, key)
        && kind(old) != kind(&value)
    {
        return Err(format!(
            "param `{key}` is {} in the pipeline ({}), but the override gives {} ({})",
            kind(old),
            shown(old),
            kind(&value),
            shown(&value)
        ));
    }
    set_existing(table, key, value)
}

/// A value's type as a person names it; integers and floats are both numbers.
pub fn kind(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::Integer(_) | toml::Value::Float(_) => "a number",
        toml::Value::String(_) => "a string",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}

fn shown(v: &toml::Value) -> String {
    let t = v.to_string();
    if t.chars().count() > 40 {
        format!("{}…", t.chars().take(40).collect::<String>())
    } else {
        t
    }
}

/// Read a params file by its extension: `.json`, `.yaml` / `.yml`, else TOML. The top level
/// must be a table (an object, a mapping).
pub fn read_file(path: &std::path::Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    parse_file_text(path, &text)
}

/// [`read_file`] of text already read from `path` (whose extension names the format).
pub fn parse_file_text(path: &std::path::Path, text: &str) -> Result<toml::Table, String> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let value = match ext.as_str() {
        "json" => serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| format!("not valid JSON: {e}"))
            .and_then(|v| json_to_toml(&v))?,
        "yaml" | "yml" => serde_yaml_ng::from_str::<serde_json::Value>(text)
            .map_err(|e| format!("not valid YAML: {e}"))
            .and_then(|v| match v {
                // An empty YAML file is an empty mapping.
                serde_json::Value::Null => Ok(toml::Value::Table(toml::Table::new())),
                v => json_to_toml(&v),
            })?,
        _ => toml::Value::Table(
            toml::from_str::<toml::Table>(text).map_err(|e| format!("not valid TOML: {e}"))?,
        ),
    };
    match value {
        toml::Value::Table(t) => Ok(t),
        _ => Err("the top level must be a table of params (KEY: VALUE)".into()),
    }
}

/// A JSON (or YAML) value as a TOML one; null has no TOML form and is refused.
pub fn json_to_toml(v: &serde_json::Value) -> Result<toml::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => return Err("null values are not allowed in params".into()),
        J::Bool(b) => toml::Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(a) => toml::Value::Array(a.iter().map(json_to_toml).collect::<Result<_, _>>()?),
        J::Object(o) => {
            let mut t = toml::Table::new();
            for (k, v) in o {
                t.insert(k.clone(), json_to_toml(v)?);
            }
            toml::Value::Table(t)
        }
    })
}

fn unknown_key_msg(key: &str, table: &toml::Table) -> String {
    let prefix = key
        .rsplit_once('.')
        .map_or(String::new(), |(p, _)| format!("{p}."));
    let full: Vec<String> = table.keys().map(|k| format!("{prefix}{k}")).collect();
    let hint = crate::error::hint(key, full.iter().map(String::as_str));
    format!("unknown param `{key}`{hint}")
}

/// All known dotted keys, tables included, for suggestions.
pub fn all_keys(table: &toml::Table) -> Vec<String> {
    fn walk(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            out.push(key.clone());
            if let toml::Value::Table(sub) = v {
                walk(&key, sub, out);
            }
        }
    }
    let mut out = Vec::new();
    walk("", table, &mut out);
    out
}

/// The text a value takes inside a command: strings bare, everything else as TOML.
pub fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether two param values are the same for staleness: like `==`, except that a NaN
/// equals a NaN (a float `nan` never equals itself, which made a stage with a NaN param
/// stale forever). Nested arrays and tables compare item by item.
pub fn same(a: Option<&toml::Value>, b: Option<&toml::Value>) -> bool {
    use toml::Value as V;
    match (a, b) {
        (None, None) => true,
        (Some(V::Float(x)), Some(V::Float(y))) => x == y || (x.is_nan() && y.is_nan()),
        (Some(V::Array(x)), Some(V::Array(y))) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(Some(x), Some(y)))
        }
        (Some(V::Table(x)), Some(V::Table(y))) => {
            x.len() == y.len() && x.iter().all(|(k, v)| same(Some(v), y.get(k)))
        }
        (a, b) => a == b,
    }
}

/// The leaf values under a key (a table key yields every value beneath it).
pub fn leaves(table: &toml::Table, key: &str) -> Option<BTreeMap<String, toml::Value>> {
    let v = lookup(table, key)?;
    let mut out = BTreeMap::new();
    match v {
        toml::Value::Table(t) => {
            for (k, leaf) in crate::spec::flatten_params(t) {
                out.insert(format!("{key}.{k}"), leaf);
            }
        }
        other => {
            out.insert(key.to_string(), other.clone());
        }
    }
    Some(out)
}

/// `PIPE_PARAM_TRAIN_LR` for `train.lr`.
pub fn env_name(key: &str) -> String {
    let mut s = String::from("PIPE_PARAM_");
    for c in key.chars() {
        s.push(if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        });
    }
    s
}

/// Replace the references pipe owns using `resolve(ns, key)`; shell `${VAR}` stays as is.
pub fn substitute(
    text: &str,
    mut resolve: impl FnMut(&str, &str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            if ["params.", "matrix.", "item", "key"]
                .iter()
                .any(|p| after.starts_with(p))
            {
                let shown: String = rest[start..].chars().take(30).collect();
                return Err(format!("`{shown}` is not closed: expected `}}`"));
            }
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let inner = &after[..end];
        let (ns, key) = inner.split_once('.').unwrap_or((inner, ""));
        if matches!(ns, "params" | "matrix" | "item" | "key") {
            out.push_str(&resolve(ns, key)?);
        } else {
            out.push_str(&rest[start..start + 2 + end + 1]);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_is_the_same_as_nan() {
        let nan = toml::Value::Float(f64::NAN);
        assert!(same(Some(&nan), Some(&nan)));
        let arr = toml::Value::Array(vec![nan.clone(), toml::Value::Integer(1)]);
        assert!(same(Some(&arr), Some(&arr.clone())));
        assert!(!same(Some(&nan), Some(&toml::Value::Float(1.0))));
        assert!(!same(Some(&nan), None));
        assert!(same(
            Some(&toml::Value::Float(0.5)),
            Some(&toml::Value::Float(0.5))
        ));
    }

    #[test]
    fn set_values_parse_as_toml_or_string() {
        assert_eq!(
            parse_set("train.lr=0.01").unwrap().1,
            toml::Value::Float(0.01)
        );
        assert_eq!(
            parse_set("board=hex8").unwrap().1,
            toml::Value::String("hex8".into())
        );
        assert_eq!(parse_set("n=3").unwrap().1, toml::Value::Integer(3));
        assert!(parse_set("nokey").is_err());
    }

    #[test]
    fn substitution_leaves_shell_variables() {
        let s = substitute("echo ${params.a} ${HOME} $X ${matrix.b}", |ns, k| {
            Ok(format!("<{ns}:{k}>"))
        })
        .unwrap();
        assert_eq!(s, "echo <params:a> ${HOME} $X <matrix:b>");
        let e = substitute("echo ${params.lr", |_, _| Ok(String::new())).unwrap_err();
        assert!(e.contains("is not closed"), "{e}");
        assert_eq!(
            substitute("echo ${HOME", |_, _| Ok(String::new())).unwrap(),
            "echo ${HOME"
        );
    }

    #[test]
    fn overrides_keep_the_type() {
        let mut t: toml::Table =
            toml::from_str("tag = \"v1\"\n[train]\nlr = 0.1\nepochs = 10\n").unwrap();
        override_param(&mut t, "train.lr", toml::Value::Integer(1), false).unwrap();
        override_param(&mut t, "train.epochs", toml::Value::Float(2.5), false).unwrap();
        let e = override_param(&mut t, "train.lr", toml::Value::String("abc".into()), true)
            .unwrap_err();
        assert!(
            e.contains("train.lr") && e.contains("a number") && e.contains("a string"),
            "{e}"
        );
        override_param(&mut t, "tag", toml::Value::Integer(123), true).unwrap();
        assert_eq!(lookup(&t, "tag"), Some(&toml::Value::String("123".into())));
        assert!(override_param(&mut t, "tag", toml::Value::Integer(1), false).is_err());
        assert!(override_param(&mut t, "train", toml::Value::Integer(1), false).is_err());
    }

    #[test]
    fn overrides_refuse_unknown_keys() {
        let mut t: toml::Table = toml::from_str("[train]\nlr = 0.1\n").unwrap();
        set_existing(&mut t, "train.lr", toml::Value::Float(0.2)).unwrap();
        assert_eq!(lookup(&t, "train.lr"), Some(&toml::Value::Float(0.2)));
        let e = set_existing(&mut t, "train.lrr", toml::Value::Float(0.2)).unwrap_err();
        assert!(e.contains("did you mean `train.lr`"), "{e}");
        assert_eq!(env_name("train.lr"), "PIPE_PARAM_TRAIN_LR");
    }
}
