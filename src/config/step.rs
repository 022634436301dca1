//! A rollout's steps as the config writes them (SPEC §6): a plain number or `{weight: N}`,
//! `{header: {NAME: VALUE}}`, `{mirror: N}`, `{clients: [NAME, ...]}` or `{pause: {}}`, each but the
//! pause with an optional `hold`, read with errors that name the accepted forms.

use super::{Dur, OrderedMap, Percent, PercentValue};
use serde::{Deserialize, Serialize};

/// One step of a rollout (SPEC §6): what it does, and how long it is held (the rollout's `hold`
/// unless the step says otherwise, e.g. `{weight: 1, hold: 24h}`).
#[derive(Debug, Clone, PartialEq)]
pub struct StepConfig {
    pub kind: Step,
    pub hold: Option<Dur>,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The canary's share of the split, taken from the baseline. A plain number in `steps` is one.
    Weight(Percent),
    /// An internal phase: requests with these headers reach the canary, nobody else does.
    Header(OrderedMap<String>),
    /// A dark phase: this share of traffic copied to the canary and compared.
    Mirror(Percent),
    /// These API clients (names under `clients`) move to the canary, on top of earlier ones.
    Clients(Vec<String>),
    /// Waits for a person's `promote`.
    Pause,
}

impl StepConfig {
    pub fn new(kind: Step) -> StepConfig {
        StepConfig { kind, hold: None }
    }
}

const STEP_FORMS: &str =
    "a step is a number (a weight), {weight: N}, {header: {NAME: VALUE}}, {mirror: N}, {clients: [NAME, ...]} or {pause: {}}, all but the pause with an optional hold";

impl schemars::JsonSchema for StepConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Step".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let percent = generator.subschema_for::<PercentValue>();
        let headers = generator.subschema_for::<OrderedMap<String>>();
        let hold = schemars::json_schema!({
            "type": "string",
            "description": "How long this step is held, e.g. 24h (the rollout's hold when absent)."
        });
        schemars::json_schema!({
            "description": STEP_FORMS,
            "oneOf": [
                {"description": "The canary's weight (shorthand for {weight: N}).", "oneOf": [{"type": "number"}, {"type": "string"}]},
                {"type": "object", "required": ["weight"], "additionalProperties": false,
                 "properties": {"weight": percent, "hold": hold}},
                {"type": "object", "required": ["header"], "additionalProperties": false,
                 "properties": {"header": headers, "hold": hold}},
                {"type": "object", "required": ["mirror"], "additionalProperties": false,
                 "properties": {"mirror": percent, "hold": hold}},
                {"type": "object", "required": ["clients"], "additionalProperties": false,
                 "properties": {"clients": {"type": "array", "items": {"type": "string"}, "minItems": 1}, "hold": hold}},
                {"type": "object", "required": ["pause"], "additionalProperties": false,
                 "properties": {"pause": {"type": ["object", "null"], "maxProperties": 0}}}
            ]
        })
    }
}

impl Serialize for StepConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1 + usize::from(self.hold.is_some())))?;
        match &self.kind {
            Step::Weight(w) => m.serialize_entry("weight", w)?,
            Step::Header(h) => m.serialize_entry("header", h)?,
            Step::Mirror(p) => m.serialize_entry("mirror", p)?,
            Step::Clients(c) => m.serialize_entry("clients", c)?,
            Step::Pause => m.serialize_entry("pause", &OrderedMap::<String>::default())?,
        }
        if let Some(h) = &self.hold {
            m.serialize_entry("hold", h)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for StepConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_yaml::Value;
        let value = Value::deserialize(d)?;
        let percent = |v: &Value| -> Result<Percent, D::Error> {
            match v {
                Value::Number(n) => n
                    .as_f64()
                    .map(|n| Percent::new(PercentValue::Number(n)))
                    .ok_or_else(|| D::Error::custom(format!("{STEP_FORMS}; got {n}"))),
                Value::String(t) => Ok(Percent::new(PercentValue::Text(t.clone()))),
                other => Err(D::Error::custom(format!(
                    "expected a percentage, got {}",
                    describe_value(other)
                ))),
            }
        };
        let m = match &value {
            Value::Number(_) | Value::String(_) => {
                return percent(&value).map(|w| StepConfig::new(Step::Weight(w)))
            }
            Value::Mapping(m) => m,
            other => {
                return Err(D::Error::custom(format!(
                    "{STEP_FORMS}; got {}",
                    describe_value(other)
                )))
            }
        };
        let mut kind = None;
        let mut hold = None;
        for (k, v) in m {
            let step = match k.as_str() {
                Some("hold") => {
                    hold = Some(match v {
                        Value::String(t) => Dur::new(t.clone()),
                        other => {
                            return Err(D::Error::custom(format!(
                                "hold: expected a duration like 24h, got {}",
                                describe_value(other)
                            )))
                        }
                    });
                    continue;
                }
                Some("weight") => Step::Weight(percent(v)?),
                Some("mirror") => Step::Mirror(percent(v)?),
                Some("clients") => Vec::<String>::deserialize(v.clone())
                    .map(Step::Clients)
                    .map_err(|_| {
                        D::Error::custom(format!(
                            "clients: expected a list of client names like [globex], got {}",
                            describe_value(v)
                        ))
                    })?,
                Some("header") => OrderedMap::<String>::deserialize(v.clone())
                    .map(Step::Header)
                    .map_err(|_| {
                        D::Error::custom(format!(
                            "header: expected a map of header names to values like {{X-Version: beta}}, got {}",
                            describe_value(v)
                        ))
                    })?,
                Some("pause") => match v {
                    Value::Null => Step::Pause,
                    Value::Mapping(p) if p.is_empty() => Step::Pause,
                    other => {
                        return Err(D::Error::custom(format!(
                            "pause takes no settings (write {{pause: {{}}}}), got {}",
                            describe_value(other)
                        )))
                    }
                },
                _ => {
                    return Err(D::Error::custom(format!(
                        "unknown step {:?}; {STEP_FORMS}",
                        k.as_str().unwrap_or("?")
                    )))
                }
            };
            if kind.replace(step).is_some() {
                return Err(D::Error::custom(format!(
                    "one kind of step per item; {STEP_FORMS}"
                )));
            }
        }
        match kind {
            Some(Step::Pause) if hold.is_some() => Err(D::Error::custom(
                "a pause waits for promote; it has no hold",
            )),
            Some(kind) => Ok(StepConfig { kind, hold }),
            None => Err(D::Error::custom(STEP_FORMS)),
        }
    }
}

fn describe_value(v: &serde_yaml::Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "something else".into())
}
