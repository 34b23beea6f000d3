//! SQL against `vault.credential_store` (plans kept per backend, see
//! secret_store.rs).

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, Uuid};

use crate::catalog::{column, uuid};
use crate::error::{VaultError, VaultResult};
use crate::secret_store::{select, update};

use pg_sys::{BYTEAOID as BYTEA, INT4OID as INT4, INT8OID as INT8, INTERVALOID as INTERVAL, JSONBOID as JSONB, TEXTOID as TEXT, TIMESTAMPTZOID as TSTZ, UUIDOID as UUID};

type Id = [u8; 16];

/// What a read needs: the sealed token and what it is bound to.
pub struct Sealed {
    pub id: Id,
    pub group: String,
    pub generation: i64,
    pub ciphertext: Option<Vec<u8>>,
}

pub fn sealed(client: &SpiClient<'_>, name: &str) -> VaultResult<Option<Sealed>> {
    const SQL: &str = "SELECT c.id, g.name, c.generation, c.ciphertext
                         FROM vault.credential_store c
                         JOIN vault.key_groups g ON g.id OPERATOR(pg_catalog.=) c.key_group_id
                        WHERE c.name OPERATOR(pg_catalog.=) $1";
    let rows = select(client, SQL, &[TEXT], &[name.into()])?;
    let Some(row) = rows.into_iter().next() else { return Ok(None) };
    Ok(Some(Sealed {
        id: *column::<Uuid>(row.get(1)?, "id")?.as_bytes(),
        group: column(row.get(2)?, "key group")?,
        generation: column(row.get(3)?, "generation")?,
        ciphertext: row.get(4)?,
    }))
}

pub struct NewCredential<'a> {
    pub id: Id,
    pub name: &'a str,
    pub provider: &'a str,
    pub config: &'a serde_json::Value,
    pub refresh_before: Interval,
    pub group_id: Id,
}

/// Inserts a credential, due for its first mint at once; false if the name is taken.
pub fn insert(client: &mut SpiClient<'_>, c: &NewCredential<'_>, now: TimestampWithTimeZone) -> VaultResult<bool> {
    const SQL: &str = "INSERT INTO vault.credential_store
                           (name, id, provider, config, refresh_before, key_group_id, created_at, next_refresh_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                       ON CONFLICT (name) DO NOTHING RETURNING 1";
    let rows = update(
        client,
        SQL,
        &[TEXT, UUID, TEXT, JSONB, INTERVAL, UUID, TSTZ],
        &[
            c.name.into(),
            uuid(&c.id).into(),
            c.provider.into(),
            JsonB(c.config.clone()).into(),
            c.refresh_before.into(),
            uuid(&c.group_id).into(),
            now.into(),
        ],
    )?;
    Ok(!rows.is_empty())
}

pub fn delete(client: &mut SpiClient<'_>, name: &str) -> VaultResult<bool> {
    let rows = update(client, "DELETE FROM vault.credential_store WHERE name OPERATOR(pg_catalog.=) $1 RETURNING 1", &[TEXT], &[name.into()])?;
    Ok(!rows.is_empty())
}

/// A credential the worker is to mint.
pub struct Due {
    pub id: Id,
    pub name: String,
    pub provider: String,
    pub config: serde_json::Value,
    /// Microseconds (the interval's fixed length: months as 30 days).
    pub refresh_before_us: i64,
    pub group_id: Id,
    pub generation: i64,
    pub failures: i32,
}

/// Credentials whose refresh time has come, oldest first, bar those listed in `skip`.
pub fn due(client: &SpiClient<'_>, now: TimestampWithTimeZone, limit: i64) -> VaultResult<Vec<Due>> {
    const SQL: &str = "SELECT id, name, provider, config,
                              (extract(epoch FROM LEAST(GREATEST(refresh_before, interval '0'), interval '1 year'))
                                OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8,
                              key_group_id, generation, failures
                         FROM vault.credential_store
                        WHERE next_refresh_at OPERATOR(pg_catalog.<=) $1
                        ORDER BY next_refresh_at LIMIT $2";
    let rows = select(client, SQL, &[TSTZ, INT8], &[now.into(), limit.into()])?;
    let mut out = Vec::new();
    for row in rows {
        out.push(Due {
            id: *column::<Uuid>(row.get(1)?, "id")?.as_bytes(),
            name: column(row.get(2)?, "name")?,
            provider: column(row.get(3)?, "provider")?,
            config: column::<JsonB>(row.get(4)?, "config")?.0,
            refresh_before_us: column(row.get(5)?, "refresh_before")?,
            group_id: *column::<Uuid>(row.get(6)?, "key_group_id")?.as_bytes(),
            generation: column(row.get(7)?, "generation")?,
            failures: column(row.get(8)?, "failures")?,
        });
    }
    Ok(out)
}

/// Stores mint `generation + 1`, if nobody stored another since the mint
/// began (compare-and-set on the generation read then). True if stored.
pub fn store_minted(
    client: &mut SpiClient<'_>,
    id: &Id,
    read_generation: i64,
    ciphertext: &[u8],
    minted_at: TimestampWithTimeZone,
    expires_at: TimestampWithTimeZone,
    next_refresh_at: TimestampWithTimeZone,
) -> VaultResult<bool> {
    const SQL: &str = "UPDATE vault.credential_store
                          SET generation = generation OPERATOR(pg_catalog.+) 1, ciphertext = $3,
                              minted_at = $4, expires_at = $5, next_refresh_at = $6,
                              failures = 0, last_error = NULL, last_error_at = NULL
                        WHERE id OPERATOR(pg_catalog.=) $1 AND generation OPERATOR(pg_catalog.=) $2
                       RETURNING 1";
    let rows = update(
        client,
        SQL,
        &[UUID, INT8, BYTEA, TSTZ, TSTZ, TSTZ],
        &[uuid(id).into(), read_generation.into(), ciphertext.into(), minted_at.into(), expires_at.into(), next_refresh_at.into()],
    )?;
    Ok(!rows.is_empty())
}

/// Records a failed mint; the previous token (if any) stays.
pub fn store_failure(
    client: &mut SpiClient<'_>,
    id: &Id,
    read_generation: i64,
    failures: i32,
    error: &str,
    now: TimestampWithTimeZone,
    next_attempt: TimestampWithTimeZone,
) -> VaultResult<()> {
    const SQL: &str = "UPDATE vault.credential_store
                          SET failures = $3, last_error = $4, last_error_at = $5, next_refresh_at = $6
                        WHERE id OPERATOR(pg_catalog.=) $1 AND generation OPERATOR(pg_catalog.=) $2";
    update(
        client,
        SQL,
        &[UUID, INT8, INT4, TEXT, TSTZ, TSTZ],
        &[uuid(id).into(), read_generation.into(), failures.into(), error.into(), now.into(), next_attempt.into()],
    )?;
    Ok(())
}

pub fn not_found<T>(v: Option<T>) -> VaultResult<T> {
    v.ok_or(VaultError::CredentialNotFound)
}
