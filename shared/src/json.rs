//! Reading providers' JSON answers: a value at a dotted path, a scalar as
//! text. The sync reads records, cursors and next links this way, and a
//! login reads the connection parameters it learns.

use serde_json::Value;

/// The value at a dotted path (`d.results.0.CurrentDivision`); a number
/// segment indexes an array. The empty path is the value itself.
pub fn value_at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, |v, segment| match v {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// A scalar as text: strings as they are, numbers and booleans printed;
/// `None` for null, arrays and objects.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_reach_into_objects_and_arrays() {
        let v = serde_json::json!({"d": {"results": [{"CurrentDivision": 42}]}});
        assert_eq!(
            value_at(&v, "d.results.0.CurrentDivision"),
            Some(&serde_json::json!(42))
        );
        assert_eq!(value_at(&v, "d.results.1"), None);
        assert_eq!(value_at(&v, ""), Some(&v));
        assert_eq!(scalar_text(&serde_json::json!(42)).as_deref(), Some("42"));
        assert_eq!(scalar_text(&Value::Null), None);
    }
}
