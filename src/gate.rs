//! Quality gates: parse `KEY OP NUMBER` checks, evaluate them against a metrics JSON file.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Op {
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Lt => "<",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Ge => a >= b,
            Op::Gt => a > b,
            Op::Le => a <= b,
            Op::Lt => a < b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Check {
    pub text: String,
    pub key: String,
    pub op: Op,
    pub expected: f64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct GateSpec {
    pub name: String,
    pub file: String,
    pub checks: Vec<Check>,
}

impl GateSpec {
    pub fn parse(
        stage: &str,
        name: Option<&str>,
        file: &str,
        checks: &[String],
    ) -> Result<GateSpec, String> {
        let (file, _) = crate::fsutil::normalize_rel(file).map_err(|e| format!("gate file {e}"))?;
        if checks.is_empty() {
            return Err("the gate has no `checks`".into());
        }
        let checks = checks
            .iter()
            .map(|c| parse_check(c))
            .collect::<Result<Vec<_>, _>>()?;
        let base = stage.split('@').next().unwrap_or(stage);
        let name = match name {
            Some(n) => n.to_string(),
            None if base == stage => format!("{stage}_gate"),
            None => format!("{}_gate", crate::fsutil::marker_name(stage)),
        };
        Ok(GateSpec { name, file, checks })
    }
}

/// Parse one check: `KEY OP NUMBER`.
pub fn parse_check(text: &str) -> Result<Check, String> {
    let t = text.trim();
    // Two-character operators first so `>=` is not read as `>`.
    for (sym, op) in [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        (">", Op::Gt),
        ("<", Op::Lt),
    ] {
        if let Some(pos) = t.find(sym) {
            let key = t[..pos].trim();
            let num = t[pos + sym.len()..].trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(format!(
                    "check `{text}`: expected `KEY {sym} NUMBER` with a key like `metrics.acc`"
                ));
            }
            let expected: f64 = num
                .parse()
                .map_err(|_| format!("check `{text}`: `{num}` is not a number"))?;
            return Ok(Check {
                text: t.to_string(),
                key: key.to_string(),
                op,
                expected,
            });
        }
    }
    Err(format!(
        "check `{text}`: no operator; expected `KEY OP NUMBER` with OP one of >= > <= < == !="
    ))
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub check: String,
    pub key: String,
    pub op: Op,
    pub expected: f64,
    pub actual: Option<f64>,
    pub passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GateResult {
    pub gate: String,
    pub stage: String,
    pub passed: bool,
    pub checks: Vec<CheckResult>,
    pub file: String,
    pub file_hash: Option<String>,
    pub evaluated_at: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub overridden: bool,
    /// Why, who and when, for an overridden gate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl GateResult {
    /// One line per failed check, for the terminal.
    pub fn failures(&self) -> Vec<String> {
        if let Some(e) = &self.error {
            return vec![e.clone()];
        }
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| match (&c.error, c.actual) {
                (Some(e), _) => format!("{}: {e}", c.check),
                (None, Some(a)) => format!("{}: actual {a}", c.check),
                (None, None) => c.check.clone(),
            })
            .collect()
    }
}

/// Evaluate a gate against its file under `root`.
pub fn evaluate(
    spec: &GateSpec,
    stage: &str,
    root: &std::path::Path,
    overridden: bool,
) -> GateResult {
    let path = root.join(&spec.file);
    let mut result = GateResult {
        gate: spec.name.clone(),
        stage: stage.to_string(),
        passed: false,
        checks: vec![],
        file: spec.file.clone(),
        file_hash: None,
        evaluated_at: crate::fsutil::now_rfc3339(),
        overridden,
        reason: None,
        by: None,
        at: None,
        error: None,
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            result.error = Some(format!("cannot read gate file `{}`: {e}", spec.file));
            result.passed = overridden;
            return result;
        }
    };
    result.file_hash = Some(blake3::hash(&bytes).to_hex().to_string());
    let json: serde_json::Value = match parse_metrics(&bytes) {
        Ok(j) => j,
        Err(e) => {
            result.error = Some(format!("gate file `{}` is not valid JSON: {e}", spec.file));
            result.passed = overridden;
            return result;
        }
    };
    for c in &spec.checks {
        let (actual, error) = match lookup(&json, &c.key) {
            None => (
                None,
                Some(format!("key `{}` not found in `{}`", c.key, spec.file)),
            ),
            Some(v) => match number(v) {
                Some(n) if n.is_nan() => (
                    None,
                    Some(format!(
                        "`{}` in `{}` is NaN, not a number to compare",
                        c.key, spec.file
                    )),
                ),
                Some(n) => (Some(n), None),
                None => (
                    None,
                    Some(format!(
                        "`{}` in `{}` is {v}, not a number",
                        c.key, spec.file
                    )),
                ),
            },
        };
        let passed = actual.is_some_and(|a| c.op.holds(a, c.expected));
        result.checks.push(CheckResult {
            check: format!("{} {} {}", c.key, c.op.text(), c.expected),
            key: c.key.clone(),
            op: c.op,
            expected: c.expected,
            actual,
            passed,
            error,
        });
    }
    result.passed = overridden || result.checks.iter().all(|c| c.passed);
    result
}

/// Parse a metrics JSON file. Python's `json.dump` (and others) write bare `NaN`,
/// `Infinity` and `-Infinity`, which JSON has no room for: when strict parsing fails, such
/// tokens outside strings are read as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`
/// (see [`number`]) and the file is parsed again.
pub fn parse_metrics(bytes: &[u8]) -> serde_json::Result<serde_json::Value> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(e) => match quote_non_finite(bytes) {
            Some(fixed) => serde_json::from_slice(&fixed).map_err(|_| e),
            None => Err(e),
        },
    }
}

/// `bytes` with bare `NaN` / `Infinity` / `-Infinity` / `+Infinity` outside strings quoted,
/// or None when there are none.
fn quote_non_finite(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let (mut in_str, mut escaped, mut changed) = (false, false, false);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_str {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_str = true;
            out.push(b);
            i += 1;
            continue;
        }
        let rest = &bytes[i..];
        let boundary = |n: usize| rest.get(n).is_none_or(|c| !c.is_ascii_alphanumeric());
        let token = [
            ("NaN", "NaN"),
            ("Infinity", "Infinity"),
            ("-Infinity", "-Infinity"),
            ("+Infinity", "Infinity"),
        ]
        .into_iter()
        .find(|(t, _)| rest.starts_with(t.as_bytes()) && boundary(t.len()));
        match token {
            Some((t, shown)) => {
                out.push(b'"');
                out.extend_from_slice(shown.as_bytes());
                out.push(b'"');
                i += t.len();
                changed = true;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

/// A metric value as a number: JSON numbers, and the strings `"NaN"`, `"Infinity"` and
/// `"-Infinity"` that [`parse_metrics`] makes of bare tokens.
pub fn number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// A dotted path into JSON; numbers index arrays (`folds.0.acc`).
pub fn lookup<'a>(json: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    let mut cur = json;
    for part in key.split('.') {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(part)?,
            serde_json::Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_operators() {
        for (t, op) in [
            ("a >= 1", Op::Ge),
            ("a>1", Op::Gt),
            ("a <= 1", Op::Le),
            ("a < 1", Op::Lt),
            ("a == 1", Op::Eq),
            ("a != 1", Op::Ne),
        ] {
            assert_eq!(parse_check(t).unwrap().op, op, "{t}");
        }
        assert!(parse_check("acc 0.5").is_err());
        assert!(parse_check("acc >= high").is_err());
        assert!(parse_check(">= 1").is_err());
    }

    #[test]
    fn looks_up_nested_and_indexed_keys() {
        let j: serde_json::Value =
            serde_json::json!({"folds": [{"acc": 0.5}, {"acc": 0.9}], "m": {"loss": 1}});
        assert_eq!(
            lookup(&j, "folds.1.acc").and_then(|v| v.as_f64()),
            Some(0.9)
        );
        assert_eq!(lookup(&j, "m.loss").and_then(|v| v.as_f64()), Some(1.0));
        assert!(lookup(&j, "folds.7.acc").is_none());
    }

    #[test]
    fn evaluates_missing_and_non_numeric() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.json"), r#"{"acc": 0.9, "name": "x"}"#).unwrap();
        let spec = GateSpec::parse(
            "ev",
            None,
            "m.json",
            &["acc >= 0.8".into(), "name > 1".into(), "nope < 1".into()],
        )
        .unwrap();
        let r = evaluate(&spec, "ev", dir.path(), false);
        assert!(!r.passed);
        assert!(r.checks[0].passed);
        assert!(r.checks[1].error.as_ref().unwrap().contains("not a number"));
        assert!(r.checks[2].error.as_ref().unwrap().contains("not found"));
        assert_eq!(spec.name, "ev_gate");
    }

    #[test]
    fn bare_nan_and_infinity_parse_leniently_and_nan_fails_a_gate() {
        let v = parse_metrics(br#"{"acc": NaN, "s": "NaN x", "l": -Infinity, "NaNo": 1}"#).unwrap();
        assert!(number(&v["acc"]).unwrap().is_nan());
        assert_eq!(v["s"], "NaN x");
        assert_eq!(number(&v["l"]), Some(f64::NEG_INFINITY));
        assert!(parse_metrics(b"{\"a\": NaNx}").is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.json"), "{\"acc\": NaN}").unwrap();
        let spec = GateSpec::parse("ev", None, "m.json", &["acc != 0.5".into()]).unwrap();
        let r = evaluate(&spec, "ev", dir.path(), false);
        assert!(!r.passed);
        assert!(r.failures()[0].contains("NaN"), "{:?}", r.failures());
    }
}
