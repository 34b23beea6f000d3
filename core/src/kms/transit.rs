//! The `transit` provider (Vault / OpenBao). Placeholder until the provider lands.

use std::time::Duration;

use super::{Binding, Call, KmsProvider, Wrapped};
use crate::keys::KeyBytes;
use crate::KmsError;

pub struct TransitKms;

impl TransitKms {
    pub fn from_config(_config: &serde_json::Value, _connect_timeout: Duration) -> Result<TransitKms, KmsError> {
        Err(KmsError::Config("provider transit is not built yet".into()))
    }
}

impl KmsProvider for TransitKms {
    fn provider(&self) -> &'static str {
        "transit"
    }
    fn check(&self, _call: &Call) -> Result<String, KmsError> {
        unreachable!()
    }
    fn wrap(&self, _key: &KeyBytes, _binding: &Binding, _call: &Call) -> Result<Wrapped, KmsError> {
        unreachable!()
    }
    fn unwrap(&self, _by: &str, _wrapped: &[u8], _binding: &Binding, _call: &Call) -> Result<KeyBytes, KmsError> {
        unreachable!()
    }
}
