//! Metrics as CloudWatch Embedded Metric Format (EMF): one JSON line on
//! stdout per invocation, which CloudWatch Logs turns into metrics. No
//! CloudWatch API call in the hot path, no client, no permission beyond
//! writing logs. The template's alarms are defined on these names.

use std::fmt;

use serde_json::{Map, Value, json};

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "OauthSync";
/// The dimension of every metric: which function wrote it. A document may
/// add more ([`Metrics::with_dimension`]: the refresher's per-provider caps).
pub const DIMENSION: &str = "Function";

/// A metric's unit, as CloudWatch names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Seconds,
    /// A ratio (`SyncLagRatio`).
    None,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Seconds => "Seconds",
            Unit::None => "None",
        }
    }
}

/// The metrics of one invocation of `function`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    function: &'static str,
    dimensions: Vec<(&'static str, String)>,
    values: Vec<(&'static str, f64, Unit)>,
}

impl Metrics {
    pub fn new(function: &'static str) -> Metrics {
        Metrics {
            function,
            dimensions: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Every metric of this document also has the dimension `name` = `value`
    /// (e.g. `Provider` = `exact`).
    pub fn with_dimension(mut self, name: &'static str, value: &str) -> Metrics {
        self.dimensions.push((name, value.to_owned()));
        self
    }

    pub fn count(mut self, name: &'static str, value: u64) -> Metrics {
        // Counts stay far below 2^53: exact as f64.
        #[allow(clippy::cast_precision_loss)]
        self.values.push((name, value as f64, Unit::Count));
        self
    }

    pub fn value(mut self, name: &'static str, value: f64, unit: Unit) -> Metrics {
        if value.is_finite() {
            self.values.push((name, value, unit));
        }
        self
    }

    /// The EMF document, timestamped `timestamp_ms` (epoch ms).
    pub fn document(&self, timestamp_ms: i64) -> Value {
        let definitions: Vec<Value> = self
            .values
            .iter()
            .map(|(name, _, unit)| json!({"Name": name, "Unit": unit.as_str()}))
            .collect();
        let dimensions: Vec<&str> = std::iter::once(DIMENSION)
            .chain(self.dimensions.iter().map(|(name, _)| *name))
            .collect();
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [dimensions],
                    "Metrics": definitions,
                }],
            }),
        );
        root.insert(DIMENSION.into(), json!(self.function));
        for (name, value) in &self.dimensions {
            root.insert((*name).into(), json!(value));
        }
        for (name, value, _) in &self.values {
            root.insert((*name).into(), json!(value));
        }
        Value::Object(root)
    }

    /// Writes the document as one line on stdout, where Lambda's log
    /// capture finds it (one write, so it is not interleaved with log lines).
    pub fn emit(&self) {
        use std::io::Write;
        let line = format!("{self}\n");
        if let Err(e) = std::io::stdout().lock().write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "the metrics line could not be written");
        }
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.document(crate::connection::now_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emf_document_names_each_metric_once_with_its_unit_and_value() {
        let metrics = Metrics::new("sync")
            .count("RecordsInserted", 12)
            .value("SyncRunSeconds", 1.5, Unit::Seconds)
            .value("SyncLagRatio", f64::NAN, Unit::None);
        let doc = metrics.document(1_796_126_400_000);
        assert_eq!(doc["_aws"]["Timestamp"], 1_796_126_400_000_i64);
        let definition = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(definition["Namespace"], NAMESPACE);
        assert_eq!(definition["Dimensions"], json!([["Function"]]));
        assert_eq!(
            definition["Metrics"],
            json!([{"Name": "RecordsInserted", "Unit": "Count"}, {"Name": "SyncRunSeconds", "Unit": "Seconds"}]),
            "a value that is not a number is left out"
        );
        assert_eq!(doc["Function"], "sync");
        assert_eq!(doc["RecordsInserted"], 12.0);
        assert_eq!(doc["SyncRunSeconds"], 1.5);
        assert!(!metrics.to_string().contains('\n'), "one line");
    }
}
