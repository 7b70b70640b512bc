//! Conditions on documents' fields, as queries and filtered watches write them.
//!
//! A condition is `PATH OP VALUE`: `PATH` names a field, a dot going into a nested object
//! (`meta.region`); `OP` is one of `=`, `!=`, `<`, `<=`, `>`, `>=` or `^=` (the string starts
//! with); `VALUE` is JSON when it reads as JSON (`80`, `true`, `"a|b"`) and text otherwise
//! (`prod`). `=` with values separated by `|` matches any of them (`env=prod|staging`). A
//! document matches a query when it matches every condition. Values compare within one JSON
//! type: numbers by value, strings by their bytes, `false` before `true`; a field that is
//! missing or of another type matches no comparison (and every `!=`).

use std::cmp::Ordering;

use serde_json::Value;

use super::Document;

/// How a condition compares the field with its value(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Equal to one of the values.
    Eq,
    /// Equal to none of the values.
    Ne,
    /// Less than.
    Lt,
    /// Less than or equal.
    Le,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Ge,
    /// A string that starts with the value.
    Prefix,
}

/// One condition on a document's field.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    /// The field's path, outermost first.
    pub path: Vec<String>,
    /// The comparison.
    pub op: Op,
    /// The values compared with (several only for `=` and `!=`).
    pub values: Vec<Value>,
}

/// Every condition a document must meet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// The conditions, all of which must hold.
    pub conditions: Vec<Condition>,
}

/// The operators, longest first so `<=` is not read as `<`.
const OPS: [(&str, Op); 7] =
    [("!=", Op::Ne), ("<=", Op::Le), (">=", Op::Ge), ("^=", Op::Prefix), ("=", Op::Eq), ("<", Op::Lt), (">", Op::Gt)];

impl std::str::FromStr for Condition {
    type Err = String;

    fn from_str(text: &str) -> Result<Condition, String> {
        let (at, symbol, op) = OPS
            .iter()
            .filter_map(|(symbol, op)| text.find(symbol).map(|at| (at, *symbol, *op)))
            .min_by_key(|(at, symbol, _)| (*at, std::cmp::Reverse(symbol.len())))
            .ok_or_else(|| format!("{text:?} is no condition: write PATH=VALUE, PATH>=VALUE, PATH^=PREFIX ..."))?;
        let path: Vec<String> = text[..at].trim().split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("{text:?}: the field's path is empty or has an empty part"));
        }
        let raw = text[at + symbol.len()..].trim();
        let values: Vec<Value> = match serde_json::from_str::<Value>(raw) {
            Ok(value) => vec![value],
            Err(_) if matches!(op, Op::Eq | Op::Ne) => raw.split('|').map(|v| Value::String(v.to_string())).collect(),
            Err(_) => vec![Value::String(raw.to_string())],
        };
        if op == Op::Prefix && !values[0].is_string() {
            return Err(format!("{text:?}: ^= takes a string"));
        }
        Ok(Condition { path, op, values })
    }
}

impl Condition {
    /// Whether `doc` meets the condition.
    pub fn matches(&self, doc: &Document) -> bool {
        let field = field(doc, &self.path);
        match self.op {
            Op::Eq => field.is_some_and(|field| self.values.iter().any(|value| equal(field, value))),
            Op::Ne => !field.is_some_and(|field| self.values.iter().any(|value| equal(field, value))),
            Op::Prefix => match (field, &self.values[0]) {
                (Some(Value::String(field)), Value::String(prefix)) => field.starts_with(prefix.as_str()),
                _ => false,
            },
            Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                let Some(ordering) = field.and_then(|field| compare(field, &self.values[0])) else { return false };
                match self.op {
                    Op::Lt => ordering == Ordering::Less,
                    Op::Le => ordering != Ordering::Greater,
                    Op::Gt => ordering == Ordering::Greater,
                    _ => ordering != Ordering::Less,
                }
            }
        }
    }
}

impl Filter {
    /// The filter of `conditions`, each as [`Condition`] reads it.
    pub fn parse<'a>(conditions: impl IntoIterator<Item = &'a str>) -> Result<Filter, String> {
        let conditions = conditions.into_iter().map(str::parse).collect::<Result<_, _>>()?;
        Ok(Filter { conditions })
    }

    /// Whether `doc` meets every condition.
    pub fn matches(&self, doc: &Document) -> bool {
        self.conditions.iter().all(|condition| condition.matches(doc))
    }
}

/// The value at `path` in `doc`.
pub fn field<'a>(doc: &'a Document, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(doc.get(first)?, |value, name| value.as_object()?.get(name))
}

/// How two JSON values of one type order; `None` across types, and for arrays and objects.
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// Whether two JSON values are equal, numbers by value (`80` equals `80.0`).
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => compare(a, b) == Some(Ordering::Equal),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(value: Value) -> Document {
        value.as_object().unwrap().clone()
    }

    fn matches(condition: &str, value: Value) -> bool {
        condition.parse::<Condition>().unwrap().matches(&doc(value))
    }

    #[test]
    fn conditions_read_as_written_and_match_by_type() {
        assert!(matches("env=prod", json!({"env": "prod"})));
        assert!(!matches("env=prod", json!({"env": "dev"})));
        assert!(matches("env=prod|staging", json!({"env": "staging"})));
        assert!(matches("env=\"a|b\"", json!({"env": "a|b"})));
        assert!(matches("port>=80", json!({"port": 80.0})));
        assert!(!matches("port>=80", json!({"port": "443"})), "a string is no number");
        assert!(matches("port<1000", json!({"port": 443})));
        assert!(matches("port!=80", json!({"name": "x"})), "a missing field is unequal");
        assert!(matches("meta.region^=eu-", json!({"meta": {"region": "eu-west"}})));
        assert!(!matches("meta.region^=eu-", json!({"meta": "eu-west"})));
        assert!(matches("on=true", json!({"on": true})));
        assert!(matches("on>false", json!({"on": true})));
        let filter = Filter::parse(["env=prod", "port>=80"]).unwrap();
        assert!(filter.matches(&doc(json!({"env": "prod", "port": 443}))));
        assert!(!filter.matches(&doc(json!({"env": "prod", "port": 8}))));
        for bad in ["env", "=prod", "a..b=1", "name^=3"] {
            assert!(bad.parse::<Condition>().is_err(), "{bad}");
        }
        assert_eq!("a<=b".parse::<Condition>().unwrap().op, Op::Le);
        assert_eq!("a=<b".parse::<Condition>().unwrap().values, vec![json!("<b")]);
    }
}
