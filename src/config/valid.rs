//! A configuration that passed validation: the only kind the release table compiles.

use super::{validate, Config, ConfigErrors};

/// A [`Config`] that passed [`validate`]. Made only by validating (or by loading, which validates),
/// so what takes one does not validate it again.
#[derive(Debug, Clone, PartialEq)]
pub struct Valid(Config);

impl Valid {
    /// Validates `config`: the proof, or every problem with it.
    pub fn new(config: Config) -> Result<Valid, ConfigErrors> {
        let errors = validate(&config);
        if errors.is_empty() {
            Ok(Valid(config))
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Parses and validates YAML text (see [`Config::load_str`]).
    pub fn load(text: &str) -> Result<Valid, ConfigErrors> {
        Config::load_str(text).map(Valid)
    }

    pub fn into_inner(self) -> Config {
        self.0
    }
}

impl std::ops::Deref for Valid {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.0
    }
}
