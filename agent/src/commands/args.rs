//! Reading a command's arguments into its typed argument type, the same way from an MQTT
//! request's `args` and from the HTTP API's JSON body, with refusals that name the key.

use serde::de::{self, DeserializeOwned, Visitor};
use serde_json::{Map, Value};

/// A command's argument type: `#[serde(deny_unknown_fields)]`, each field a key the
/// command takes.
pub trait Args: DeserializeOwned {
    /// The command's name, as refusals say it (`update/apply`).
    const COMMAND: &'static str;
}

/// How the sender wrote the arguments, so that a refusal names a key the way they did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The `args` object of an MQTT command request: keys are `args.model`.
    Request,
    /// The JSON body of an HTTP request: keys are `model`.
    Body,
}

impl Origin {
    /// `key` as the sender wrote it, at most 64 bytes of it.
    pub fn name(self, key: &str) -> String {
        let key = crate::mqtt::excerpt(key, 64);
        match self {
            Origin::Request => format!("args.{key}"),
            Origin::Body => key,
        }
    }
}

/// Why arguments were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// A key the command does not take (before, MQTT ignored it and HTTP refused it).
    #[error("`{name}` is not an argument of {command}; it takes {accepted}")]
    Unknown { command: &'static str, name: String, accepted: String },
    /// A key with a value of the wrong type.
    #[error("`{name}`: {problem}")]
    Invalid { name: String, problem: String },
    /// Not a JSON object at all (HTTP bodies only; MQTT's `args` is read as one).
    #[error("{command} takes a JSON object of arguments ({accepted}): {problem}")]
    NotAnObject { command: &'static str, accepted: String, problem: String },
}

/// Reads `args` into `A`, refusing any key `A` does not declare.
pub fn parse<A: Args>(args: Map<String, Value>, origin: Origin) -> Result<A, ArgsError> {
    let keys = keys::<A>();
    if let Some(unknown) = args.keys().find(|k| !keys.contains(&k.as_str())) {
        return Err(ArgsError::Unknown {
            command: A::COMMAND,
            name: origin.name(unknown),
            accepted: accepted(keys),
        });
    }
    // The keys are known: what is left is a value of the wrong type. Every field of an
    // argument type has a default (a command's `check` names what it needs), so a
    // one-key object reads unless that key's value is wrong: trying each key alone finds
    // the one to name, without a path-tracking deserializer in the binary.
    serde_json::from_value(Value::Object(args.clone())).map_err(|e| {
        let problem = crate::mqtt::excerpt(&e.to_string(), 256);
        let culprit = args.into_iter().find_map(|(key, value)| {
            let alone = Map::from_iter([(key.clone(), value)]);
            serde_json::from_value::<A>(Value::Object(alone)).err().map(|e| (key, e))
        });
        match culprit {
            Some((key, e)) => ArgsError::Invalid {
                name: origin.name(&key),
                problem: crate::mqtt::excerpt(&e.to_string(), 256),
            },
            None => ArgsError::Invalid { name: A::COMMAND.into(), problem },
        }
    })
}

/// Reads an HTTP body into `A`: empty (only white space) is `{}`, anything else must be
/// a JSON object.
pub fn from_body<A: Args>(body: &[u8]) -> Result<A, ArgsError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return parse(Map::new(), Origin::Body);
    }
    let not_an_object = |problem: String| ArgsError::NotAnObject {
        command: A::COMMAND,
        accepted: accepted(keys::<A>()),
        problem: crate::mqtt::excerpt(&problem, 256),
    };
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => parse(map, Origin::Body),
        Ok(other) => Err(not_an_object(format!("got {}", crate::mqtt::excerpt(&other.to_string(), 64)))),
        Err(e) => Err(not_an_object(e.to_string())),
    }
}

/// "`model`, `version` and `force`", or "none".
fn accepted(keys: &[&str]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    match quoted.as_slice() {
        [] => "none".into(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The keys `A` takes, as its derived `Deserialize` declares them to the deserializer:
/// read from the type itself, so the list in a refusal cannot drift from the fields.
pub fn keys<A: Args>() -> &'static [&'static str] {
    match A::deserialize(KeysProbe) {
        Err(Found(keys)) => keys,
        // Only a struct reaches `deserialize_struct`; no argument type is anything else.
        Ok(_) => &[],
    }
}

/// A deserializer that reads nothing: it stops at the struct's list of fields.
struct KeysProbe;

/// The "error" that carries the fields out of [`KeysProbe`].
#[derive(Debug)]
struct Found(&'static [&'static str]);

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fields {:?}", self.0)
    }
}

impl std::error::Error for Found {}

impl de::Error for Found {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Found(&[])
    }
}

impl<'de> de::Deserializer<'de> for KeysProbe {
    type Error = Found;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
        Err(Found(&[]))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Found> {
        Err(Found(fields))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}
