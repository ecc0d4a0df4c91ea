//! One NDJSON line → one sensor message.

use serde_json::Value;

use super::SensorMessage;
use edge_infer::pipeline::Payload;

/// Parses a line: a JSON array of numbers, or an object with `data` and optionally
/// `stream` (overriding `default_stream`) and `reset`.
pub fn parse_line(
    line: &str,
    model: &str,
    default_stream: &str,
    source: &str,
) -> Result<SensorMessage, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let (stream, reset, data) = match value {
        Value::Object(mut map) => {
            let stream = match map.remove("stream") {
                Some(Value::String(s)) if crate::config::is_valid_id(&s) => s,
                Some(other) => {
                    return Err(format!("`stream` must be an id (A-Z a-z 0-9 . _ -), got {other}"));
                }
                None => default_stream.to_string(),
            };
            let reset = matches!(map.get("reset"), Some(Value::Bool(true)));
            let data = map.remove("data").ok_or("an object line needs a `data` array")?;
            (stream, reset, data)
        }
        other => (default_stream.to_string(), false, other),
    };
    Ok(SensorMessage {
        model: model.to_string(),
        stream,
        source: source.to_string(),
        payload: Payload::Json(data),
        reset,
        receipt: None,
        input_id: None,
        force_cloud: false,
    })
}
