//! Values of the configuration that are read once, when the YAML is: durations (`30s`),
//! percentages (`10`, `"0.5%"`), SHA-256 digests, networks and sticky keys. Each keeps what was written (what the config serialises back to, and
//! what two configs are compared by) and what it reads as. Validation reports a value that does not
//! read, with its path; everything that takes a validated config uses the value as read, never
//! parsing the text again.

use super::parse::{self, Cidr, StickyKey};
use super::PercentValue;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt::Debug;
use std::time::Duration;

/// A type the configuration holds as written and as read.
pub trait Reading: Sized + Clone {
    /// What the YAML holds.
    type Written: Clone + PartialEq + Debug + Serialize + DeserializeOwned + schemars::JsonSchema;
    /// Reads it, or says what is wrong with it (the caller adds the path).
    fn from_written(written: &Self::Written) -> Result<Self, String>;
}

/// A value as written and as read (once, when the config is).
#[derive(Clone)]
pub struct Read<T: Reading> {
    written: T::Written,
    read: Result<T, String>,
}

impl<T: Reading> Read<T> {
    pub fn new(written: T::Written) -> Self {
        let read = T::from_written(&written);
        Read { written, read }
    }

    /// As written.
    pub fn written(&self) -> &T::Written {
        &self.written
    }

    /// As read, or why it does not read: what validation checks.
    pub fn read(&self) -> Result<T, String> {
        self.read.clone()
    }

    /// As read; `None` only in a config that did not pass validation.
    pub fn value(&self) -> Option<&T> {
        self.read.as_ref().ok()
    }
}

impl<T: Reading + Default + Copy> Read<T> {
    /// The value. A validated config's always reads; an invalid one counts as the type's zero here.
    pub fn get(&self) -> T {
        self.read.as_ref().copied().unwrap_or_default()
    }
}

impl<T: Reading> Default for Read<T>
where
    T::Written: Default,
{
    /// Not written: validation says so where a value is required.
    fn default() -> Self {
        Read::new(T::Written::default())
    }
}

impl<T: Reading<Written = String>> From<&str> for Read<T> {
    fn from(text: &str) -> Self {
        Read::new(text.to_string())
    }
}

impl<T: Reading> Debug for Read<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Debug::fmt(&self.written, f)
    }
}

impl<T: Reading> std::fmt::Display for Read<T>
where
    T::Written: std::fmt::Display,
{
    /// As written.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.written, f)
    }
}

impl<T: Reading> PartialEq for Read<T> {
    /// Compared as written: `60s` and `1m` are different text in a file.
    fn eq(&self, other: &Self) -> bool {
        self.written == other.written
    }
}

impl<T: Reading> Serialize for Read<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.written.serialize(s)
    }
}

impl<'de, T: Reading> Deserialize<'de> for Read<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::Written::deserialize(d).map(Read::new)
    }
}

/// The schema of what is written, as if the field held it.
impl<T: Reading> schemars::JsonSchema for Read<T> {
    fn schema_name() -> Cow<'static, str> {
        T::Written::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        T::Written::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<T::Written>()
    }

    fn inline_schema() -> bool {
        true
    }
}

/// A duration: `100us`, `250ms`, `1.5s`, `1m30s`, `10m`, `24h`.
pub type Dur = Read<Duration>;

impl Reading for Duration {
    type Written = String;
    fn from_written(text: &String) -> Result<Duration, String> {
        parse::duration(text)
    }
}

/// A percentage (not a fraction) in 0..=100: `10`, `0.5`, `"10%"`, `"0.5%"`.
pub type Percent = Read<f64>;

impl Reading for f64 {
    type Written = PercentValue;
    fn from_written(written: &PercentValue) -> Result<f64, String> {
        parse::percent(written)
    }
}

impl From<f64> for Percent {
    fn from(n: f64) -> Percent {
        Read::new(PercentValue::Number(n))
    }
}

/// A SHA-256 digest written in hex (an admin token's, an API key's).
pub type Digest = Read<[u8; 32]>;

impl Reading for [u8; 32] {
    type Written = String;
    fn from_written(text: &String) -> Result<[u8; 32], String> {
        parse::sha256_hex(text)
    }
}

/// A network: `10.0.0.0/8`, `2001:db8::/32`, or one address.
pub type Network = Read<Cidr>;

impl Reading for Cidr {
    type Written = String;
    fn from_written(text: &String) -> Result<Cidr, String> {
        text.parse()
    }
}

/// What a sticky split or mirror keys on: `header:NAME`, `cookie:NAME`, `client`, `client_ip`.
pub type Sticky = Read<StickyKey>;

impl Reading for StickyKey {
    type Written = String;
    fn from_written(text: &String) -> Result<StickyKey, String> {
        text.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_is_read_once_and_written_back_as_it_was() {
        let d: Dur = serde_yaml::from_str("1m30s").unwrap();
        assert_eq!(d.get(), Duration::from_secs(90));
        assert_eq!(serde_yaml::to_string(&d).unwrap().trim(), "1m30s");
        let bad = Dur::from("30");
        assert!(bad.read().unwrap_err().contains("invalid duration"));
        assert_eq!(bad.get(), Duration::ZERO);
        // Compared as written.
        assert_ne!(Dur::from("60s"), Dur::from("1m"));
    }

    #[test]
    fn a_percentage_is_read_once_and_written_back_as_it_was() {
        let p: Percent = serde_yaml::from_str("\"0.5%\"").unwrap();
        assert_eq!(p.get(), 0.5);
        assert_eq!(serde_yaml::to_string(&p).unwrap().trim(), "0.5%");
        assert_eq!(p.written(), &PercentValue::Text("0.5%".into()));
        let n: Percent = serde_yaml::from_str("10").unwrap();
        assert_eq!(n.get(), 10.0);
        assert!(Percent::from(120.0).read().is_err());
    }

    #[test]
    fn networks_keys_and_digests_are_read_once() {
        let n: Network = serde_yaml::from_str("10.0.0.0/8").unwrap();
        assert!(n.value().is_some());
        assert!(Network::from("10.0.0.0/33").read().is_err());
        let k: Sticky = serde_yaml::from_str("header:X-User").unwrap();
        assert!(k.value().is_some());
        assert!(Sticky::from("nonsense").read().is_err());
        let d = Digest::from("00".repeat(32).as_str());
        assert_eq!(d.value(), Some(&[0u8; 32]));
        assert!(Digest::from("xyz").read().is_err());
    }
}
