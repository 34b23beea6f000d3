//! The `aws` provider (AWS KMS). Placeholder until the provider lands.

use std::time::Duration;

use super::{Binding, Call, KmsProvider, Wrapped};
use crate::keys::KeyBytes;
use crate::KmsError;

pub struct AwsKms;

impl AwsKms {
    pub fn from_config(_config: &serde_json::Value, _connect_timeout: Duration) -> Result<AwsKms, KmsError> {
        Err(KmsError::Config("provider aws is not built yet".into()))
    }
}

impl KmsProvider for AwsKms {
    fn provider(&self) -> &'static str {
        "aws"
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
