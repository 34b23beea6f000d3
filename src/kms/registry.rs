//! The KMS key registry: `vault.add_kms_key`, `vault.set_default_kms_key`,
//! `vault.drop_kms_key`.
//!
//! Only superusers may call them: a config names files (token, CA) and
//! network endpoints that the server process will read and reach with its
//! own credentials. The functions are not SECURITY DEFINER, so the check is
//! on the real caller, and a superuser needs no other privilege to write
//! the table.

use pgrx::prelude::*;
use pgrx::JsonB;
use secret_vault_core::policy;
use secret_vault_core::KmsError;

use crate::catalog::column;
use crate::error::{require_writable, VaultError, VaultResult};
use crate::identity;
use crate::kms::{self, KeySpec};

pub(crate) fn require_superuser(what: &'static str) -> VaultResult<()> {
    if unsafe { pg_sys::superuser() } {
        Ok(())
    } else {
        Err(VaultError::PermissionDenied(what))
    }
}

fn exists(client: &pgrx::spi::SpiClient<'_>, name: &str) -> VaultResult<bool> {
    let rows = client.select(
        &identity::sql("SELECT 1 FROM vault.kms_keys WHERE name OPERATOR(pg_catalog.=) $1")?,
        Some(1),
        &[name.into()],
    )?;
    Ok(!rows.is_empty())
}

/// Registers a KMS key after checking it with a live call; returns the
/// resolved id that new wraps will record (an alias becomes the key ARN).
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn add_kms_key(name: &str, provider: &str, config: JsonB) -> String {
    crate::audit::write("add_kms_key", Some(name), || add_kms_key_impl(name, provider, &config.0))
}

fn add_kms_key_impl(name: &str, provider: &str, config: &serde_json::Value) -> VaultResult<String> {
    require_writable("register a KMS key")?;
    require_superuser("vault.add_kms_key (only superusers may register KMS keys)")?;
    policy::validate_name("KMS key", name)?;
    if !matches!(provider, "local" | "aws" | "transit") {
        return Err(VaultError::InvalidKmsConfig {
            name: name.to_string(),
            reason: format!("unknown provider \"{}\"; use aws, transit or local", provider.escape_debug()),
        });
    }
    if !config.is_object() {
        return Err(VaultError::InvalidKmsConfig { name: name.to_string(), reason: "config must be a JSON object".into() });
    }
    let text = config.to_string();
    if Spi::connect(|c| exists(c, name))? {
        return Err(VaultError::KmsKeyExists(name.to_string()));
    }
    // The live call runs before anything is written or locked.
    let spec = KeySpec { name, kind: provider, config: &text };
    let key_id = kms::check(&spec).map_err(|e| match e {
        VaultError::Kms(KmsError::Config(reason)) | VaultError::KmsCall { error: KmsError::Config(reason), .. } => {
            VaultError::InvalidKmsConfig { name: name.to_string(), reason }
        }
        other => other,
    })?;
    Spi::connect_mut(|c| -> VaultResult<()> {
        let inserted = c.update(
            &identity::sql(
                "INSERT INTO vault.kms_keys (name, provider, config, key_id)
                 VALUES ($1, $2, $3::pg_catalog.jsonb, $4) ON CONFLICT (name) DO NOTHING RETURNING 1",
            )?,
            None,
            &[name.into(), provider.into(), text.as_str().into(), key_id.as_str().into()],
        )?;
        if inserted.is_empty() {
            return Err(VaultError::KmsKeyExists(name.to_string()));
        }
        Ok(())
    })?;
    Ok(key_id)
}

/// Makes `name` the KMS key that new groups use when they name none.
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn set_default_kms_key(name: &str) {
    crate::audit::write("set_default_kms_key", Some(name), || {
    require_writable("change the default KMS key")?;
    require_superuser("vault.set_default_kms_key (only superusers may change KMS keys)")?;
    Spi::connect_mut(|c| -> VaultResult<()> {
        if !exists(c, name)? {
            return Err(VaultError::KmsKeyNotFound);
        }
        // The table's trigger takes the flag from the previous default.
        c.update(&identity::sql("UPDATE vault.kms_keys SET is_default = true WHERE name OPERATOR(pg_catalog.=) $1")?, None, &[name.into()])?;
        Ok(())
    })
    })
}

/// Removes a KMS key from the registry; refused while a group uses it, and
/// for the default.
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn drop_kms_key(name: &str) {
    crate::audit::write("drop_kms_key", Some(name), || {
    require_writable("drop a KMS key")?;
    require_superuser("vault.drop_kms_key (only superusers may change KMS keys)")?;
    Spi::connect_mut(|c| -> VaultResult<()> {
        let rows = c.update(
            &identity::sql("SELECT is_default FROM vault.kms_keys WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE")?,
            Some(1),
            &[name.into()],
        )?;
        let Some(row) = rows.into_iter().next() else {
            return Err(VaultError::KmsKeyNotFound);
        };
        if column::<bool>(row.get(1)?, "is_default")? {
            return Err(VaultError::KmsKeyIsDefault(name.to_string()));
        }
        let groups: i64 = c
            .select(
                // Groups using it, and groups moved away whose rows it still wraps.
                &identity::sql(
                    "SELECT pg_catalog.count(*) FROM vault.key_groups g
                      WHERE g.kms_key OPERATOR(pg_catalog.=) $1
                         OR EXISTS (SELECT 1 FROM vault.ring_keys r
                                     WHERE r.group_id OPERATOR(pg_catalog.=) g.id AND r.kms_key OPERATOR(pg_catalog.=) $1)",
                )?,
                Some(1),
                &[name.into()],
            )?
            .first()
            .get_one::<i64>()?
            .unwrap_or(0);
        if groups > 0 {
            return Err(VaultError::KmsKeyInUse { name: name.to_string(), groups });
        }
        let audit: i64 = c
            .select(&identity::sql("SELECT pg_catalog.count(*) FROM vault.audit_chain WHERE kms_key OPERATOR(pg_catalog.=) $1")?, Some(1), &[name.into()])?
            .first()
            .get_one::<i64>()?
            .unwrap_or(0);
        if audit > 0 {
            // The audit chain's key moves to the default KMS key (this one
            // is not the default, checked above): unwrapped by the key
            // being dropped, wrapped by the default, before the drop.
            crate::audit::writer::move_key(c)?;
        }
        c.update(&identity::sql("DELETE FROM vault.kms_keys WHERE name OPERATOR(pg_catalog.=) $1")?, None, &[name.into()])?;
        Ok(())
    })
    })
}
